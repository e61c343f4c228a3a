"""Known-answer tests for the raw-data readers, the synthetic source, the dispatcher and the downloader.

The fixtures in ``tests/fixtures/`` are written in the exact upstream record formats; bad inputs are
derived from them in ``tmp_path``. Nothing here touches the network except a local HTTP server.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import pairwise
from pathlib import Path

import pytest

from datamodules.config import DataConfig
from datamodules.download import DownloadError, download
from datamodules.sources import (
    DataFormatError,
    MissingDataError,
    amazon2014_files,
    amazon2018_files,
    make_synthetic,
    read_amazon2014,
    read_amazon2018,
    read_prepared,
    resolve_raw,
    source_fingerprint,
)

FIXTURES = Path(__file__).parent / "fixtures"
REVIEWS14 = FIXTURES / "reviews_Tiny_5.json.gz"
META14 = FIXTURES / "meta_Tiny.json.gz"
REVIEWS18 = FIXTURES / "Tiny2018.json.gz"
META18 = FIXTURES / "meta_Tiny2018.json"
PREPARED = FIXTURES / "prepared_tiny"
BEAUTY = Path(__file__).resolve().parents[2] / "shared" / "data" / "amazon" / "Beauty" / "prepared"

A, B, C, D = (f"B0018ITEM{x}" for x in "ABCD")


def write_gz(path: Path, lines: list[str]) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.writelines(line + "\n" for line in lines)
    return path


# ------------------------------------------------------------------------------------------------
# Amazon 2014


def test_amazon2014_known_answer():
    raw = read_amazon2014(REVIEWS14, META14)
    # File order, not time order: Alice's second review is older than her first.
    assert raw.interactions == [
        ("A1ALICE", "0205616461", 1370000000),
        ("A2BOB", "B000BEAUT1", 1360000000),
        ("A1ALICE", "B000BEAUT2", 1350000000),
        ("A3CAROL", "B000BEAUT3", 1340000000),
        ("A2BOB", "0205616461", 1360000000),
        ("A1ALICE", "B000BEAUT3", 1380000000),
        ("A3CAROL", "B000BEAUT4", 1345000000),
        ("A2BOB", "B000BEAUT2", 1390000000),
    ]
    assert (raw.num_users, raw.num_items) == (3, 5)
    assert raw.items == {
        "0205616461": ("Bio-Active Anti-Aging Serum", "A light serum & day cream in one."),
        "B000BEAUT1": ("Salt & Pepper Shampoo", ""),  # &amp; unescaped, no description
        "B000BEAUT2": ("", "Nature's gentle cleanser"),  # no title; a double-quoted Python literal
        "B000BEAUT3": ("Lip Gloss Cherry", "Shiny."),  # whitespace and newline collapsed
        "B000BEAUT4": ("", ""),  # reviewed but absent from meta
    }
    assert "B9NOREVIEW" not in raw.items  # in meta, never reviewed


def test_amazon2014_meta_is_python_literal_not_json():
    first = gzip.decompress(META14.read_bytes()).decode().splitlines()[0]
    with pytest.raises(json.JSONDecodeError):
        json.loads(first)


# ------------------------------------------------------------------------------------------------
# Amazon 2018 with A-LLMRec's recipe


def test_amazon2018_recipe_quirks():
    raw = read_amazon2018(REVIEWS18, META18, min_count=2, rating_threshold=3)
    assert raw.interactions == [
        ("U1", A, 300),
        ("U2", A, 100),
        ("U1", B, 200),  # overall 1: not counted in pass 1, but kept in pass 2
        ("U2", B, 200),
        ("U3", D, 100),
        ("U3", A, 50),
        ("U1", A, 400),  # duplicate (U1, A) kept
        ("U5", B, 100),
        ("U5", D, 300),
        ("U6", A, 200),  # single pass: U6 counted 2 but keeps 1 after item F is dropped
    ]
    users = Counter(user for user, _, _ in raw.interactions)
    # U4 has 2 reviews but only 1 rated >= 3: the rating filter acts on the counts.
    assert "U4" not in users
    assert users["U6"] == 1 < 2
    # Item C has 3 reviews but only one rated >= 3, so it goes; E and F have 1 review each.
    assert list(raw.items) == [A, B, D]
    assert raw.items[A] == ("Cream & Mask Duo", "Rich cream & mask.")  # unescaped, description[0]
    assert raw.items[B] == ("Hand Soap B", "")  # later meta duplicate wins; empty list -> ""
    assert raw.items[D] == ("", "Only a description.")  # no title


def test_amazon2018_without_rating_threshold_counts_everything():
    raw = read_amazon2018(REVIEWS18, META18, min_count=2, rating_threshold=0)
    assert len(raw.interactions) == 14  # all but the single reviews of E and F
    assert set(raw.items) == {A, B, C, D}
    assert ("U4", B, 100) in raw.interactions


def test_amazon2018_higher_threshold():
    raw = read_amazon2018(REVIEWS18, META18, min_count=3, rating_threshold=3)
    assert raw.interactions == [("U1", A, 300), ("U1", A, 400)]


def test_amazon2018_accepts_gzipped_meta(tmp_path):
    meta = write_gz(tmp_path / "meta_Tiny2018.json.gz", META18.read_text().splitlines())
    assert read_amazon2018(REVIEWS18, meta, 2, 3) == read_amazon2018(REVIEWS18, META18, 2, 3)


# ------------------------------------------------------------------------------------------------
# Prepared folder


def test_prepared_known_answer():
    raw = read_prepared(PREPARED)
    assert raw.interactions == [
        ("u1", "i1", 1000),
        ("u1", "i2", 1000),
        ("u2", "i2", 900),
        ("u1", "i3", 1100),
        ("u2", "i1", 950),
    ]
    # Quoted comma kept, missing description "", i9 has no interaction and is dropped.
    assert raw.items == {
        "i1": ("Shampoo, Extra Mild", "Gentle on hair"),
        "i2": ("Hand Cream", ""),
        "i3": ("", "No title here"),
    }


def test_prepared_description_column_optional(tmp_path):
    shutil.copy(PREPARED / "interactions.csv", tmp_path)
    (tmp_path / "items.csv").write_text("item_id,title\ni1,One\ni2,Two\ni3,Three\n")
    assert read_prepared(tmp_path).items["i2"] == ("Two", "")


def test_real_beauty_prepared():
    if not (BEAUTY / "interactions.csv").is_file():
        pytest.skip(f"real Beauty data not found at {BEAUTY} (it lives outside the repo, in ../shared/data)")
    raw = read_prepared(BEAUTY)
    assert (raw.num_users, raw.num_items, len(raw.interactions)) == (22_363, 12_101, 198_502)
    assert raw.interactions[0] == ("A1YJEY40YUW4SE", "B004756YJA", 1318896000)
    assert sum(1 for title, _ in raw.items.values() if not title) == 7


# ------------------------------------------------------------------------------------------------
# Synthetic


def test_synthetic_deterministic():
    a = make_synthetic(50, 40, 5, 12, seed=3)
    assert a == make_synthetic(50, 40, 5, 12, seed=3)
    assert a != make_synthetic(50, 40, 5, 12, seed=4)


def test_synthetic_shape_and_text():
    raw = make_synthetic(30, 40, 5, 12, seed=0)
    lengths = Counter(user for user, _, _ in raw.interactions)
    assert len(lengths) == 30 and all(5 <= n <= 12 for n in lengths.values())
    assert set(raw.items) == {item for _, item, _ in raw.interactions}
    titles = [title for title, _ in raw.items.values()]
    assert len(set(titles)) == len(titles)  # distinct titles: an LLM answer maps to one item
    assert all(len(title.split()) == 3 and title.replace(" ", "").isalpha() for title in titles)
    assert all(desc.startswith("A ") for _, desc in raw.items.values())
    by_user: dict[str, list[tuple[str, int]]] = {}
    for user, item, stamp in raw.interactions:
        by_user.setdefault(user, []).append((item, stamp))
    for seq in by_user.values():
        stamps = [stamp for _, stamp in seq]
        assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)  # strictly increasing
        assert len({item for item, _ in seq}) == len(seq)  # no repeated item


def test_synthetic_is_learnable():
    """Given the previous item and the user's stride (visible in the history), the next item is mostly fixed."""
    num_items = 120
    raw = make_synthetic(200, num_items, 5, 20, seed=1)
    by_user: dict[str, list[int]] = {}
    for user, item, _ in raw.interactions:
        by_user.setdefault(user, []).append(int(item[1:]))
    hits = total = 0
    strides = set()
    for seq in by_user.values():
        deltas = [(b - a) % num_items for a, b in pairwise(seq)]
        stride, count = Counter(deltas).most_common(1)[0]
        strides.add(stride)
        hits, total = hits + count, total + len(deltas)
    assert hits / total > 0.8
    assert strides <= {1, 2, 3, 5, 7}  # a small shared set: other users reveal each pattern


# ------------------------------------------------------------------------------------------------
# Dispatcher and fingerprint


def test_resolve_raw_sources(tmp_path):
    cfg = DataConfig(name="syn", source="synthetic", synthetic_users=20, synthetic_items=30, synthetic_seed=5)
    assert resolve_raw(cfg) == make_synthetic(20, 30, 5, 20, 5)
    assert resolve_raw(DataConfig(name="p", source="prepared", data_dir=str(PREPARED))) == read_prepared(PREPARED)
    raw_dir = tmp_path / "raw" / "tiny"
    raw_dir.mkdir(parents=True)
    shutil.copy(REVIEWS14, raw_dir)
    shutil.copy(META14, raw_dir)
    cfg14 = DataConfig(name="tiny", source="amazon2014", category="Tiny", root=str(tmp_path), download=False)
    assert resolve_raw(cfg14) == read_amazon2014(REVIEWS14, META14)
    # A prepared folder in data_dir overrides raw files.
    cfg_override = DataConfig(name="tiny", source="amazon2014", category="Tiny", data_dir=str(PREPARED))
    assert resolve_raw(cfg_override) == read_prepared(PREPARED)
    cfg18 = DataConfig(
        name="t18", source="amazon2018", category="Tiny2018", data_dir=str(FIXTURES), min_count=2, rating_threshold=3
    )
    assert resolve_raw(cfg18) == read_amazon2018(REVIEWS18, META18, 2, 3)


def test_resolve_raw_missing_files_without_download(tmp_path):
    cfg = DataConfig(name="beauty", source="amazon2014", category="Beauty", root=str(tmp_path), download=False)
    with pytest.raises(MissingDataError) as err:
        resolve_raw(cfg)
    message = str(err.value)
    for name, url in amazon2014_files("Beauty").items():
        assert name in message and url in message
    assert "data.download=true" in message


def test_resolve_raw_needs_folder_or_category():
    with pytest.raises(ValueError, match=r"data.data_dir=<folder> or DATA_DIR=<folder>"):
        resolve_raw(DataConfig(name="p", source="prepared"))
    with pytest.raises(ValueError, match=r"data\.category"):
        resolve_raw(DataConfig(name="x", source="amazon2018", download=False))


def test_source_fingerprint(tmp_path):
    cfg = DataConfig(name="t18", source="amazon2018", category="Tiny2018", data_dir=str(FIXTURES), min_count=2)
    fp = source_fingerprint(cfg)
    assert json.loads(json.dumps(fp)) == fp
    assert fp["inputs"]["reviews"]["size"] == REVIEWS18.stat().st_size
    assert fp["inputs"]["meta"]["path"].endswith("meta_Tiny2018.json")
    assert fp["recipe"] == {"min_count": 2, "rating_threshold": 0.0}
    assert source_fingerprint(DataConfig(**{**cfg.__dict__, "min_count": 3})) != fp
    assert source_fingerprint(DataConfig(**{**cfg.__dict__, "eval_seed": 1})) != fp
    syn = DataConfig(name="s", source="synthetic")
    assert source_fingerprint(syn) != source_fingerprint(DataConfig(name="s", source="synthetic", synthetic_seed=1))
    # Files not downloaded yet still give a fingerprint (nothing is fetched).
    missing = source_fingerprint(DataConfig(name="b", source="amazon2014", category="Beauty", root=str(tmp_path)))
    assert missing["inputs"]["reviews"]["size"] is None


def test_url_helpers():
    assert amazon2014_files("Beauty")["reviews_Beauty_5.json.gz"] == (
        "http://snap.stanford.edu/data/amazon/productGraph/categoryFiles/reviews_Beauty_5.json.gz"
    )
    assert amazon2018_files("Luxury_Beauty")["meta_Luxury_Beauty.json.gz"] == (
        "https://datarepo.eng.ucsd.edu/mcauley_group/data/amazon_v2/metaFiles2/meta_Luxury_Beauty.json.gz"
    )


# ------------------------------------------------------------------------------------------------
# Bad inputs: each message names the file (and line) and says what to do


def test_missing_gzip_names_url(tmp_path):
    with pytest.raises(MissingDataError) as err:
        read_amazon2014(tmp_path / "reviews_Beauty_5.json.gz", META14)
    assert "reviews_Beauty_5.json.gz does not exist" in str(err.value)
    assert amazon2014_files("Beauty")["reviews_Beauty_5.json.gz"] in str(err.value)


def test_truncated_gzip(tmp_path):
    bad = tmp_path / "reviews_Beauty_5.json.gz"
    bad.write_bytes(REVIEWS14.read_bytes()[:-30])
    with pytest.raises(DataFormatError) as err:
        read_amazon2014(bad, META14)
    message = str(err.value)
    assert str(bad) in message and "not a valid gzip file (truncated download?)" in message
    assert "delete it and rerun to download again" in message


def test_not_gzip_at_all(tmp_path):
    bad = tmp_path / "Tiny2018.json.gz"
    bad.write_text("<html>404 not found</html>\n")
    with pytest.raises(DataFormatError, match="not a valid gzip file"):
        read_amazon2018(bad, META18)


def test_bad_json_line(tmp_path):
    lines = gzip.decompress(REVIEWS14.read_bytes()).decode().splitlines()
    lines[2] = '{"reviewerID": "A1ALICE", "asin": ' + "x" * 200
    bad = write_gz(tmp_path / "reviews_Tiny_5.json.gz", lines)
    with pytest.raises(DataFormatError) as err:
        read_amazon2014(bad, META14)
    message = str(err.value)
    assert f"{bad}, line 3" in message and "JSON" in message
    assert '{"reviewerID": "A1ALICE", "asin": xxx' in message and "x" * 81 not in message  # first 80 chars


def test_bad_meta_literal(tmp_path):
    lines = gzip.decompress(META14.read_bytes()).decode().splitlines()
    lines[1] = "{'asin': 'B000BEAUT1', 'title': 'unterminated}"
    bad = write_gz(tmp_path / "meta_Tiny.json.gz", lines)
    with pytest.raises(DataFormatError, match=r"line 2: cannot parse the line as a Python literal"):
        read_amazon2014(REVIEWS14, bad)


def test_missing_field(tmp_path):
    lines = gzip.decompress(REVIEWS18.read_bytes()).decode().splitlines()
    record = json.loads(lines[4])
    del record["unixReviewTime"]
    lines[4] = json.dumps(record)
    bad = write_gz(tmp_path / "Tiny2018.json.gz", lines)
    with pytest.raises(DataFormatError) as err:
        read_amazon2018(bad, META18, 2, 3)
    assert f"{bad}, line 5" in str(err.value) and "'unixReviewTime'" in str(err.value)


def test_missing_rating_only_matters_with_threshold(tmp_path):
    lines = [
        json.dumps({k: v for k, v in json.loads(line).items() if k != "overall"})
        for line in gzip.decompress(REVIEWS18.read_bytes()).decode().splitlines()
    ]
    bad = write_gz(tmp_path / "Tiny2018.json.gz", lines)
    assert len(read_amazon2018(bad, META18, 2, 0).interactions) == 14
    with pytest.raises(DataFormatError, match="'overall'"):
        read_amazon2018(bad, META18, 2, 3)


def test_csv_missing_column(tmp_path):
    shutil.copy(PREPARED / "items.csv", tmp_path)
    (tmp_path / "interactions.csv").write_text("user,item_id,timestamp\nu1,i1,1\n")
    with pytest.raises(DataFormatError) as err:
        read_prepared(tmp_path)
    message = str(err.value)
    assert "interactions.csv, line 1" in message and "['user_id']" in message
    assert "found ['user', 'item_id', 'timestamp']" in message


def test_csv_unknown_item(tmp_path):
    shutil.copy(PREPARED / "items.csv", tmp_path)
    (tmp_path / "interactions.csv").write_text("user_id,item_id,timestamp\nu1,i1,1\nu1,i404,2\n")
    with pytest.raises(DataFormatError) as err:
        read_prepared(tmp_path)
    assert "interactions.csv, line 3: item_id 'i404' is not in" in str(err.value)
    assert "add a row" in str(err.value)


@pytest.mark.parametrize(
    ("items", "interactions", "expected"),
    [
        ("item_id,title\ni1,a\ni1,b\n", "user_id,item_id,timestamp\nu1,i1,1\n", r"line 3: duplicate item_id"),
        ("item_id,title\ni1,a\n", "user_id,item_id,timestamp\nu1,i1,2014-01-01\n", r"line 2: timestamp '2014-01-01'"),
        ("item_id,title\ni1,a\n", "user_id,item_id,timestamp\n,i1,1\n", r"line 2: empty user_id"),
        ("item_id,title\n,a\n", "user_id,item_id,timestamp\nu1,i1,1\n", r"items.csv, line 2: empty item_id"),
    ],
)
def test_csv_bad_rows(tmp_path, items, interactions, expected):
    (tmp_path / "items.csv").write_text(items)
    (tmp_path / "interactions.csv").write_text(interactions)
    with pytest.raises(DataFormatError, match=expected):
        read_prepared(tmp_path)


def test_missing_prepared_folder(tmp_path):
    with pytest.raises(MissingDataError) as err:
        read_prepared(tmp_path / "nowhere")
    assert "nowhere does not exist" in str(err.value) and "interactions.csv" in str(err.value)
    (tmp_path / "half").mkdir()
    shutil.copy(PREPARED / "interactions.csv", tmp_path / "half")
    with pytest.raises(MissingDataError, match=r"items.csv does not exist"):
        read_prepared(tmp_path / "half")


# ------------------------------------------------------------------------------------------------
# Download against a local HTTP server


class _Server:
    """A threaded HTTP server on 127.0.0.1 serving in-memory files, optionally with Range support."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.honour_range = True
        self.ranges: list[str | None] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = server.files.get(self.path)
                requested = self.headers.get("Range")
                server.ranges.append(requested)
                if body is None:
                    self.send_error(404, "Not Found")
                    return
                start = int(requested.split("=")[1].split("-")[0]) if requested and server.honour_range else 0
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                self.wfile.write(body[start:])

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    srv = _Server()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


PAYLOAD = bytes(range(256)) * 400  # 100 KiB


def test_download_success_with_progress(server, tmp_path, capsys):
    server.files["/data.bin"] = PAYLOAD
    dest = tmp_path / "sub" / "data.bin"
    assert download(f"{server.url}/data.bin", dest, sha256=hashlib.sha256(PAYLOAD).hexdigest()) == dest
    assert dest.read_bytes() == PAYLOAD and not dest.with_suffix(".bin.part").exists()
    assert "data.bin" in capsys.readouterr().err  # tqdm's bar is labelled with the file name
    # A present file is not fetched again (the offline path).
    server.files.clear()
    download(f"{server.url}/data.bin", dest)


def test_download_resumes_part(server, tmp_path):
    server.files["/data.bin"] = PAYLOAD
    dest = tmp_path / "data.bin"
    dest.with_suffix(".bin.part").write_bytes(PAYLOAD[:1000])
    download(f"{server.url}/data.bin", dest, progress=False)
    assert server.ranges == ["bytes=1000-"] and dest.read_bytes() == PAYLOAD


def test_download_restarts_when_range_ignored(server, tmp_path):
    server.files["/data.bin"] = PAYLOAD
    server.honour_range = False
    dest = tmp_path / "data.bin"
    dest.with_suffix(".bin.part").write_bytes(b"garbage")
    download(f"{server.url}/data.bin", dest, progress=False)
    assert dest.read_bytes() == PAYLOAD


def test_download_404(server, tmp_path):
    url = f"{server.url}/missing.json.gz"
    dest = tmp_path / "missing.json.gz"
    with pytest.raises(DownloadError) as err:
        download(url, dest, progress=False)
    message = str(err.value)
    assert url in message and "404" in message and str(dest) in message and "data.data_dir" in message
    assert not dest.exists()


def test_download_sha_mismatch(server, tmp_path):
    server.files["/data.bin"] = PAYLOAD
    dest = tmp_path / "data.bin"
    with pytest.raises(DownloadError, match=r"sha256 mismatch.*deleted"):
        download(f"{server.url}/data.bin", dest, sha256="0" * 64, progress=False)
    assert not dest.exists() and not dest.with_suffix(".bin.part").exists()


def test_download_connection_refused(tmp_path):
    with ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler) as probe:
        port = probe.server_address[1]  # a port that is closed once the block ends
    start = time.monotonic()
    with pytest.raises(DownloadError, match="Check the network"):
        download(f"http://127.0.0.1:{port}/x", tmp_path / "x", progress=False, timeout=5)
    assert time.monotonic() - start < 5


def test_resolve_raw_downloads_missing_files(server, tmp_path, monkeypatch):
    """With data.download=true the dispatcher fetches missing files from the official URLs."""
    for name in ("reviews_Tiny_5.json.gz", "meta_Tiny.json.gz"):
        server.files[f"/{name}"] = (FIXTURES / name).read_bytes()
    monkeypatch.setattr("datamodules.sources.amazon.AMAZON2014_URL", server.url)
    cfg = DataConfig(name="tiny", source="amazon2014", category="Tiny", root=str(tmp_path), download=True)
    assert resolve_raw(cfg) == read_amazon2014(REVIEWS14, META14)
    assert (tmp_path / "raw" / "tiny" / "meta_Tiny.json.gz").is_file()
