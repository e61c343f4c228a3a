"""Readers that turn upstream data files into one raw form, :class:`RawData`.

Sources (``DataConfig.source``):

- ``amazon2014``: McAuley et al.'s 2014 5-core reviews ``reviews_<Cat>_5.json.gz`` (JSON lines) and
  metadata ``meta_<Cat>.json.gz`` (one Python-literal dict per line). No further filter.
- ``amazon2018``: the 2018 per-category files ``<Cat>.json.gz`` and ``meta_<Cat>.json[.gz]`` with
  A-LLMRec's preprocessing recipe, quirks included (``shared/reference/a-llmrec.md`` section 1.2).
- ``prepared``: a folder with ``interactions.csv`` and ``items.csv``.
- ``rlmrec``: a folder with RLMRec's pickled ``trn_mat.pkl``, ``val_mat.pkl``, ``tst_mat.pkl``
  (the data FACE uses); read into :class:`SplitMatrices`, a fixed split with integer ids.
- ``synthetic``: a seeded, learnable generator for tests and smoke runs.

Everything here is pure Python (no Lightning, no OmegaConf, no pandas; scipy only for ``rlmrec``,
imported there) so tests import it quickly. Ids stay raw strings; mapping them to integers is
``preprocess.remap_ids``' job (``rlmrec`` ids are the matrix indices, mapped by ``preprocess_splits``).
"""

from __future__ import annotations

import ast
import csv
import gzip
import html
import json
import logging
import pickle
import random
import re
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from datamodules.config import DataConfig
from datamodules.download import download

log = logging.getLogger(__name__)

READER_VERSION = 1
"""Bump when a reader's output changes for the same input, so processed caches are rebuilt."""

AMAZON2014_URL = "http://snap.stanford.edu/data/amazon/productGraph/categoryFiles"
AMAZON2018_URL = "https://datarepo.eng.ucsd.edu/mcauley_group/data/amazon_v2"

KNOWN_SIZES = {"meta_Beauty.json.gz": 99_156_148}
"""Byte sizes of upstream files where known (``shared/data/amazon/README.md``); checked on download."""

INTERACTION_COLUMNS = ("user_id", "item_id", "timestamp")
ITEM_COLUMNS = ("item_id", "title")
RLMREC_FILES = {"train": "trn_mat.pkl", "val": "val_mat.pkl", "test": "tst_mat.pkl"}
"""Split -> file name of RLMRec's interaction matrices (``data/<dataset>/`` in HKUDS/RLMRec)."""
SPLITS = tuple(RLMREC_FILES)


class DataFormatError(ValueError):
    """An input file is missing, corrupt or malformed; the message names the file and line and says how to fix it."""


class MissingDataError(DataFormatError):
    """A required input file or folder does not exist."""


@dataclass
class RawData:
    """Interactions and item texts with raw string ids, as read from a source.

    - ``interactions``: ``(raw user id, raw item id, unix timestamp)`` in file order, not sorted;
      ties and duplicates are kept (sorting is stable downstream).
    - ``items``: raw item id -> ``(title, description)``, ``""`` when unknown. Readers return an
      entry for every item in ``interactions`` and for no other item.
    """

    interactions: list[tuple[str, str, int]]
    items: dict[str, tuple[str, str]]

    @property
    def num_users(self) -> int:
        return len({user for user, _, _ in self.interactions})

    @property
    def num_items(self) -> int:
        return len({item for _, item, _ in self.interactions})


# ----------------------------------------------------------------------------------------------
# Upstream file names and URLs


def amazon2014_files(category: str) -> dict[str, str]:
    """File name -> official URL of the 2014 5-core reviews and metadata of ``category`` (e.g. ``Beauty``)."""
    return {
        f"reviews_{category}_5.json.gz": f"{AMAZON2014_URL}/reviews_{category}_5.json.gz",
        f"meta_{category}.json.gz": f"{AMAZON2014_URL}/meta_{category}.json.gz",
    }


def amazon2018_files(category: str) -> dict[str, str]:
    """File name -> official URL of the 2018 full reviews and metadata of ``category`` (e.g. ``Luxury_Beauty``)."""
    return {
        f"{category}.json.gz": f"{AMAZON2018_URL}/categoryFiles/{category}.json.gz",
        f"meta_{category}.json.gz": f"{AMAZON2018_URL}/metaFiles2/meta_{category}.json.gz",
    }


def _url_hint(path: Path, kind: str) -> str:
    """How to get a missing raw file: its official URL when the name follows the upstream pattern."""
    name = path.name
    patterns = {
        "2014 reviews": (r"reviews_(.+)_5\.json\.gz", amazon2014_files),
        "2014 meta": (r"meta_(.+)\.json\.gz", amazon2014_files),
        "2018 reviews": (r"(.+)\.json\.gz", amazon2018_files),
        "2018 meta": (r"meta_(.+)\.json(?:\.gz)?", amazon2018_files),
    }
    pattern, files = patterns[kind]
    match = re.fullmatch(pattern, name)
    if match:
        urls = files(match.group(1))
        url = urls.get(name) or urls.get(name + ".gz")
        if url:
            return f"download it from {url} (or run with data.download=true to fetch it)"
    return "get it from the Amazon review data pages (https://cseweb.ucsd.edu/~jmcauley/datasets.html)"


# ----------------------------------------------------------------------------------------------
# Line-level reading with useful errors


def _require_file(path: Path, kind: str) -> None:
    if not path.is_file():
        raise MissingDataError(f"{path} does not exist (expected the {kind} file); {_url_hint(path, kind)}")


def _iter_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield ``(line number, text)`` of a plain or gzipped (by suffix) UTF-8 file, skipping blank lines.

    Damage to the gzip stream surfaces while iterating (at the start for a non-gzip file, at the
    end for a truncated one) and becomes a :class:`DataFormatError` that says to download again.
    """
    zipped = path.suffix == ".gz"
    opener: Callable[..., Any] = gzip.open if zipped else open
    # BadGzipFile is an OSError; other OSErrors of a plain file are not about gzip and propagate.
    damaged = (gzip.BadGzipFile, EOFError, zlib.error, OSError) if zipped else (gzip.BadGzipFile,)
    number = 0
    try:
        with opener(path, "rb") as fh:
            for number, raw in enumerate(fh, start=1):
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    raise DataFormatError(
                        f"{path}, line {number}: not valid UTF-8 ({err}); the line starts with {raw[:80]!r}. "
                        "The file is probably corrupt: delete it and download it again."
                    ) from err
                if text.strip():
                    yield number, text
    except damaged as err:
        where = f" after line {number}" if number else ""
        raise DataFormatError(
            f"{path} is not a valid gzip file (truncated download?){where}: {err} — delete it and rerun "
            "to download again"
        ) from err


def _parse_error(path: Path, number: int, text: str, how: str, err: Exception) -> DataFormatError:
    return DataFormatError(
        f"{path}, line {number}: cannot parse the line as {how} ({type(err).__name__}: {err}); it starts with "
        f"{text[:80]!r}. Expected one record per line in the upstream format; the file may be corrupt or "
        "of another dataset version: delete it and download it again."
    )


def _iter_json(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    for number, text in _iter_lines(path):
        try:
            record = json.loads(text)
        except json.JSONDecodeError as err:
            raise _parse_error(path, number, text, "JSON", err) from err
        if not isinstance(record, dict):
            raise _parse_error(path, number, text, "a JSON object", TypeError(f"got {type(record).__name__}"))
        yield number, record


def _field(record: dict[str, Any], name: str, kind: type, path: Path, number: int) -> Any:
    """``record[name]``, checked to exist, to have type ``kind`` and (for strings) to be non-empty."""
    if name not in record:
        raise DataFormatError(
            f"{path}, line {number}: the record has no {name!r} field (fields present: {sorted(record)}). "
            f"Every review needs {name!r}; the file is not in the expected upstream format."
        )
    value = record[name]
    ok = isinstance(value, kind) and not isinstance(value, bool)
    if kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or (kind is str and not value):
        raise DataFormatError(
            f"{path}, line {number}: field {name!r} must be a non-empty {kind.__name__}, got {value!r}; "
            "the file is not in the expected upstream format."
        )
    return value


def _review(record: dict[str, Any], path: Path, number: int) -> tuple[str, str, int]:
    return (
        _field(record, "reviewerID", str, path, number),
        _field(record, "asin", str, path, number),
        _field(record, "unixReviewTime", int, path, number),
    )


def clean_text(value: Any) -> str:
    """HTML-unescape and collapse whitespace (newlines too: they would break line-based outputs)."""
    if not isinstance(value, str):
        return ""
    return " ".join(html.unescape(value).split())


# A cheap look at a meta line's asin: metadata files hold hundreds of thousands of items of which a
# 5-core keeps a few percent, and literal_eval on every line would dominate the reading time.
_ASIN_RE = re.compile(r"""['"]asin['"]\s*:\s*['"]([^'"]+)['"]""")


def _iter_meta(
    path: Path, wanted: set[str], parse: Callable[[str], Any], how: str
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield parsed meta records whose asin is in ``wanted``, duplicates included, in file order."""
    for number, text in _iter_lines(path):
        seen = _ASIN_RE.findall(text)
        if seen and not any(asin in wanted for asin in seen):
            continue
        try:
            record = parse(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as err:
            raise _parse_error(path, number, text, how, err) from err
        if not isinstance(record, dict):
            raise _parse_error(path, number, text, how, TypeError(f"got {type(record).__name__}, not a dict"))
        asin = record.get("asin")
        if not isinstance(asin, str) or not asin:
            raise DataFormatError(
                f"{path}, line {number}: the meta record has no 'asin' field (fields present: {sorted(record)}); "
                "the file is not in the expected upstream format."
            )
        if asin in wanted:
            yield number, record


# ----------------------------------------------------------------------------------------------
# Amazon 2014


def _item_texts(
    meta_path: Path,
    interactions: list[tuple[str, str, int]],
    parse: Callable[[str], Any],
    what: str,
    description: Callable[[Any], str],
) -> tuple[dict[str, tuple[str, str]], int]:
    """``(items, number without a meta record)``: ``(title, description)`` of every interacted item,
    in first-appearance order; ``("", "")`` for items the meta file does not describe."""
    wanted = {item for _, item, _ in interactions}
    texts: dict[str, tuple[str, str]] = {}
    for _, record in _iter_meta(meta_path, wanted, parse, what):
        texts[record["asin"]] = (clean_text(record.get("title")), description(record.get("description")))
    items = {item: texts.get(item, ("", "")) for item in dict.fromkeys(item for _, item, _ in interactions)}
    return items, len(wanted - texts.keys())


def read_amazon2014(reviews_path: Path | str, meta_path: Path | str) -> RawData:
    """Read the 2014 5-core reviews and metadata of one category.

    Reviews: gzipped JSON lines with ``reviewerID``, ``asin``, ``unixReviewTime``. Metadata: gzipped
    lines that are Python literals (single quotes), read with ``ast.literal_eval``; ``title`` and
    ``description`` (a string) may be missing. Titles and descriptions are HTML-unescaped and their
    whitespace collapsed. Items without a meta record get ``("", "")``; meta records of items
    without reviews are dropped. No filter is applied: the file is already the 5-core.
    """
    reviews_path, meta_path = Path(reviews_path), Path(meta_path)
    _require_file(reviews_path, "2014 reviews")
    _require_file(meta_path, "2014 meta")
    interactions = [_review(record, reviews_path, number) for number, record in _iter_json(reviews_path)]
    items, without_meta = _item_texts(meta_path, interactions, ast.literal_eval, "a Python literal dict", clean_text)
    log.info(
        "read %s: %d interactions, %d items (%d without a meta record)",
        reviews_path,
        len(interactions),
        len(items),
        without_meta,
    )
    return RawData(interactions, items)


# ----------------------------------------------------------------------------------------------
# Amazon 2018 with A-LLMRec's recipe


def _first_description(value: Any) -> str:
    """2018 descriptions are lists of paragraphs; A-LLMRec uses element 0."""
    if isinstance(value, list):
        return clean_text(value[0]) if value else ""
    return clean_text(value)


def read_amazon2018(
    reviews_path: Path | str, meta_path: Path | str, min_count: int = 5, rating_threshold: float = 0.0
) -> RawData:
    """Read 2018 per-category reviews and metadata with A-LLMRec's preprocessing, quirks included.

    The recipe of ``pre_train/sasrec/data_preprocess.py`` (``reference/a-llmrec.md`` section 1.2):

    1. Pass 1 counts reviews per user and per item, skipping reviews with
       ``overall < rating_threshold`` (A-LLMRec: 3 for Beauty and Toys, otherwise no filter).
    2. Pass 2 keeps a review iff its user count ``>= min_count`` and its item count ``>= min_count``.
       The rating filter is *not* re-applied, so low-rated reviews of qualifying users and items
       stay. It is a single pass, not an iterative k-core: users can end with fewer than
       ``min_count`` interactions. Duplicate (user, item) reviews are kept.

    Metadata (``meta_<Cat>.json`` or ``.json.gz``, JSON lines; a later record of the same asin wins,
    as in the official dict): title, and ``description[0]`` (``""`` if the list is empty or missing).
    Deliberate fixes over the official code: titles and descriptions are HTML-unescaped and their
    whitespace collapsed (the official code keeps ``&amp;``), an empty description is ``""`` rather
    than ``"Empty description"``, and a record without a ``description`` key still gives its title.
    """
    reviews_path, meta_path = Path(reviews_path), Path(meta_path)
    if min_count < 1:
        raise ValueError(f"min_count must be >= 1, got {min_count}")
    _require_file(reviews_path, "2018 reviews")
    _require_file(meta_path, "2018 meta")

    def reviews() -> Iterator[tuple[str, str, int, float | None]]:
        for number, record in _iter_json(reviews_path):
            user, item, time = _review(record, reviews_path, number)
            # The rating only matters for counting; without a threshold it need not exist.
            rating = _field(record, "overall", float, reviews_path, number) if rating_threshold > 0 else None
            yield user, item, time, rating

    user_count: dict[str, int] = {}
    item_count: dict[str, int] = {}
    total = 0
    for user, item, _, rating in reviews():
        total += 1
        if rating is not None and rating < rating_threshold:
            continue
        user_count[user] = user_count.get(user, 0) + 1
        item_count[item] = item_count.get(item, 0) + 1
    # Pass 2 re-reads the file rather than holding every review in memory (Movies has ~8.8M).
    interactions = [
        (user, item, time)
        for user, item, time, _ in reviews()
        if user_count.get(user, 0) >= min_count and item_count.get(item, 0) >= min_count
    ]
    items, _ = _item_texts(meta_path, interactions, json.loads, "JSON", _first_description)
    log.info(
        "read %s with min_count=%d rating_threshold=%g: kept %d of %d reviews, %d users, %d items",
        reviews_path,
        min_count,
        rating_threshold,
        len(interactions),
        total,
        len({user for user, _, _ in interactions}),
        len(items),
    )
    return RawData(interactions, items)


# ----------------------------------------------------------------------------------------------
# Prepared folder


def _csv_header(reader: Iterator[list[str]], path: Path, required: tuple[str, ...]) -> dict[str, int]:
    """Read a CSV header and map its column names to indices, or explain which required ones are missing."""
    header = [name.strip() for name in next(reader, [])]
    missing = [name for name in required if name not in header]
    if missing:
        raise DataFormatError(
            f"{path}, line 1: missing required column(s) {missing}; found {header}. The first line must be a "
            f"header naming at least {list(required)}: add or rename the column(s)."
        )
    return {name: header.index(name) for name in header}


def _cell(row: list[str], index: int, path: Path, line: int, name: str) -> str:
    if index >= len(row):
        raise DataFormatError(
            f"{path}, line {line}: the row has {len(row)} field(s) but column {name!r} is field {index + 1}; "
            "fix the row (a missing comma or quote?)."
        )
    return row[index].strip()


def read_prepared(folder: Path | str) -> RawData:
    """Read a prepared folder: ``interactions.csv`` and ``items.csv``, both with a header row.

    ``interactions.csv`` needs ``user_id,item_id,timestamp`` (integer unix time; more columns are
    allowed and ignored), rows in the order to keep for equal timestamps. ``items.csv`` needs
    ``item_id,title`` and may have ``description``. Every interacted item must be in ``items.csv``;
    items listed there without interactions are dropped.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingDataError(
            f"prepared folder {folder} does not exist; expected a folder with interactions.csv "
            "(user_id,item_id,timestamp) and items.csv (item_id,title[,description]). Pass "
            "data.data_dir=<folder> or DATA_DIR=<folder>."
        )
    items_path, inter_path = folder / "items.csv", folder / "interactions.csv"
    for path in (inter_path, items_path):
        if not path.is_file():
            raise MissingDataError(
                f"{path} does not exist; a prepared folder needs interactions.csv (user_id,item_id,timestamp) "
                "and items.csv (item_id,title[,description]). Pass data.data_dir=<folder> or DATA_DIR=<folder>."
            )

    texts: dict[str, tuple[str, str]] = {}
    # utf-8-sig: tolerate the byte-order mark that spreadsheet programs write.
    with open(items_path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        cols = _csv_header(reader, items_path, ITEM_COLUMNS)
        i_id, i_title, i_desc = cols["item_id"], cols["title"], cols.get("description")
        for row in reader:
            if not row:
                continue
            line = reader.line_num
            item = _cell(row, i_id, items_path, line, "item_id")
            if not item:
                raise DataFormatError(f"{items_path}, line {line}: empty item_id; every row needs an item id.")
            if item in texts:
                raise DataFormatError(
                    f"{items_path}, line {line}: duplicate item_id {item!r}; each item must be listed once "
                    "(remove or merge the duplicate row)."
                )
            title = _cell(row, i_title, items_path, line, "title")
            description = row[i_desc].strip() if i_desc is not None and i_desc < len(row) else ""
            texts[item] = (title, description)

    interactions: list[tuple[str, str, int]] = []
    with open(inter_path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        cols = _csv_header(reader, inter_path, INTERACTION_COLUMNS)
        c_user, c_item, c_time = cols["user_id"], cols["item_id"], cols["timestamp"]
        for row in reader:
            if not row:
                continue
            line = reader.line_num
            user = _cell(row, c_user, inter_path, line, "user_id")
            item = _cell(row, c_item, inter_path, line, "item_id")
            stamp = _cell(row, c_time, inter_path, line, "timestamp")
            if not user or not item:
                which = "user_id" if not user else "item_id"
                raise DataFormatError(
                    f"{inter_path}, line {line}: empty {which}; every row needs a user and an item id."
                )
            try:
                time = int(stamp)
            except ValueError:
                raise DataFormatError(
                    f"{inter_path}, line {line}: timestamp {stamp!r} is not an integer; expected unix seconds "
                    "(e.g. 1318896000). Convert dates to unix time."
                ) from None
            if item not in texts:
                raise DataFormatError(
                    f"{inter_path}, line {line}: item_id {item!r} is not in {items_path}; add a row for it to "
                    "items.csv (the title may be empty) or remove the interaction."
                )
            interactions.append((user, item, time))
    items = {item: texts[item] for item in dict.fromkeys(item for _, item, _ in interactions)}
    if len(items) < len(texts):
        log.info("%s: %d items without interactions dropped", items_path, len(texts) - len(items))
    log.info("read %s: %d interactions, %d items", folder, len(interactions), len(items))
    return RawData(interactions, items)


# ----------------------------------------------------------------------------------------------
# Synthetic


# Word tables read better as rows.
# fmt: off
_ADJECTIVES = (
    "Gentle", "Bright", "Soft", "Classic", "Fresh", "Silky", "Bold", "Pure",
    "Daily", "Deluxe", "Mini", "Natural", "Radiant", "Smooth", "Vivid", "Calm",
)
_COLOURS = (
    "Amber", "Coral", "Ivory", "Jade", "Lilac", "Olive", "Pearl", "Ruby",
    "Sage", "Teal", "Cobalt", "Rose", "Honey", "Slate", "Mint", "Plum",
)
_NOUNS = (
    "Shampoo", "Lotion", "Serum", "Brush", "Palette", "Cream", "Soap", "Mask",
    "Balm", "Toner", "Mist", "Polish", "Gloss", "Scrub", "Oil", "Comb",
)
# fmt: on
_USES = (
    "for everyday use",
    "for dry skin",
    "for a night routine",
    "for travel",
    "for sensitive skin",
    "for a quick refresh",
    "for shiny hair",
    "for a salon finish",
)
SYNTHETIC_STRIDES = (1, 2, 3, 5, 7)
"""Per-user step between consecutive items; a small set, so other users reveal each pattern."""


def make_synthetic(
    num_users: int, num_items: int, min_len: int, max_len: int, seed: int, noise: float = 0.1
) -> RawData:
    """A learnable, seeded synthetic source with worded item titles.

    User ``u<k>`` starts at a random item and moves by a stride drawn from
    :data:`SYNTHETIC_STRIDES`: ``next = (prev + stride) % num_items``; with probability ``noise``
    the next item is random instead. An item a user already has is skipped (the next free one is
    taken), so sequences never repeat an item and the held-out item is never in the history.
    Timestamps strictly increase per user. Items ``i<k>`` get distinct titles such as
    "Gentle Amber Shampoo" and a one-sentence description. The same arguments give the same data.
    """
    if num_users < 1 or num_items < 2:
        raise ValueError(f"make_synthetic needs num_users >= 1 and num_items >= 2, got {num_users} and {num_items}")
    if not 1 <= min_len <= max_len <= num_items:
        raise ValueError(
            f"make_synthetic needs 1 <= min_len <= max_len <= num_items, got {min_len}, {max_len}, {num_items}"
        )
    if not 0.0 <= noise <= 1.0:
        raise ValueError(f"noise must be in [0, 1], got {noise}")
    rng = random.Random(seed)
    strides = [s for s in SYNTHETIC_STRIDES if s < num_items] or [1]
    base_time = 1_400_000_000
    interactions: list[tuple[str, str, int]] = []
    for user in range(num_users):
        length = rng.randint(min_len, max_len)
        stride = rng.choice(strides)
        item = rng.randrange(num_items)
        time = base_time + rng.randrange(365) * 86_400
        seen = {item}
        interactions.append((f"u{user}", f"i{item}", time))
        for _ in range(length - 1):
            if rng.random() < noise:
                # Rejection sampling: cheap since a sequence covers at most max_len <= num_items items.
                while item in seen:
                    item = rng.randrange(num_items)
            else:
                item = (item + stride) % num_items
                while item in seen:
                    item = (item + 1) % num_items
            seen.add(item)
            time += rng.randint(1, 3) * 86_400
            interactions.append((f"u{user}", f"i{item}", time))

    # Titles: a seeded draw of distinct (adjective, colour, noun) triples; a number once they run out.
    combos = len(_ADJECTIVES) * len(_COLOURS) * len(_NOUNS)
    codes = rng.sample(range(combos), min(num_items, combos))
    used = dict.fromkeys(item for _, item, _ in interactions)
    items: dict[str, tuple[str, str]] = {}
    for raw in used:
        index = int(raw[1:])
        code = codes[index % combos]
        adjective = _ADJECTIVES[code // (len(_COLOURS) * len(_NOUNS))]
        colour = _COLOURS[code // len(_NOUNS) % len(_COLOURS)]
        noun = _NOUNS[code % len(_NOUNS)]
        title = f"{adjective} {colour} {noun}" + (f" No. {index // combos + 1}" if index >= combos else "")
        use = _USES[(code + index) % len(_USES)]
        items[raw] = (title, f"A {adjective.lower()} {noun.lower()} in {colour.lower()}, {use}.")
    return RawData(interactions, items)


# ----------------------------------------------------------------------------------------------
# RLMRec / FACE: pickled scipy.sparse train/validation/test matrices


@dataclass
class SplitMatrices:
    """Binary interactions with a fixed train/validation/test split and integer ids.

    - ``num_users``, ``num_items``: the matrices' shape; raw ids are the row and column indices
      ``0..num_users-1`` and ``0..num_items-1`` (users or items without any interaction included).
    - ``splits``: ``"train"``, ``"val"``, ``"test"`` -> ``(users [E], items [E])`` int64 arrays of
      0-based raw ids, sorted by user then item, without duplicates. The splits are disjoint.
    """

    num_users: int
    num_items: int
    splits: dict[str, tuple[np.ndarray, np.ndarray]]


_RLMREC_EXPECTED = (
    "a folder with trn_mat.pkl, val_mat.pkl and tst_mat.pkl, each a pickled scipy.sparse matrix of "
    "users x items with 0-based ids (RLMRec's data/<dataset>/, e.g. ../shared/data/rlmrec/amazon)"
)


class _ForbiddenPickle(Exception):
    """The pickle names a global other than numpy arrays and scipy.sparse matrices."""


class _SparseUnpickler(pickle.Unpickler):
    """An unpickler that builds only numpy arrays and scipy.sparse matrices.

    A pickle can run arbitrary code when loaded; interaction matrices need nothing but these
    classes, so anything else is refused rather than executed.
    """

    _NUMPY = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
    }

    def find_class(self, module: str, name: str) -> Any:
        sparse_class = module.startswith("scipy.sparse") and name.endswith(("_matrix", "_array"))
        if (module, name) not in self._NUMPY and not sparse_class:
            raise _ForbiddenPickle(f"{module}.{name}")
        return super().find_class(module, name)


def _load_sparse_pickle(path: Path) -> Any:
    """The 2-D scipy.sparse matrix pickled in ``path``, or a :class:`DataFormatError` saying what is wrong."""
    import scipy.sparse as sp

    if not path.is_file():
        raise MissingDataError(
            f"{path} does not exist; data.source=rlmrec needs {_RLMREC_EXPECTED}. Pass data.data_dir=<folder> "
            "or DATA_DIR=<folder>."
        )
    try:
        with open(path, "rb") as fh:
            matrix = _SparseUnpickler(fh).load()
    except _ForbiddenPickle as err:
        raise DataFormatError(
            f"{path}: refusing to unpickle {err}; expected a pickled scipy.sparse matrix (users x items) and "
            "nothing else. Is this RLMRec's interaction matrix?"
        ) from None
    except ModuleNotFoundError as err:
        raise DataFormatError(
            f"{path}: unpickling needs the module {err.name!r}, which is not installed; RLMRec's pickles need "
            "numpy and scipy >= 1.8 (scipy.sparse._coo)."
        ) from err
    except Exception as err:  # a damaged pickle fails in many ways (EOFError, UnpicklingError, ValueError ...)
        raise DataFormatError(
            f"{path} is not a readable pickle ({type(err).__name__}: {err}); expected a pickled scipy.sparse "
            "matrix (users x items). The file is probably truncated or corrupt: copy it again."
        ) from err
    if not sp.issparse(matrix) or matrix.ndim != 2:
        got = type(matrix).__name__ + (f" of shape {matrix.shape}" if hasattr(matrix, "shape") else "")
        raise DataFormatError(
            f"{path} holds a {got}; expected a 2-D scipy.sparse matrix (users x items), as in RLMRec's "
            f"{path.name}."
        )
    return matrix


def read_rlmrec(folder: Path | str) -> SplitMatrices:
    """Read RLMRec's ``trn_mat.pkl``, ``val_mat.pkl``, ``tst_mat.pkl`` from ``folder``.

    Each file is a pickled scipy.sparse matrix (RLMRec ships ``coo_matrix``) of shape
    ``(#users, #items)``; the three must share it. Entries are binarised with ``!= 0`` as RLMRec
    does (``coo_matrix((m != 0).astype(np.float32))``), so stored zeros are not interactions and
    ratings count once. The splits must be disjoint: an item of a user's test split that is also
    in their training split would be masked at evaluation and could never be hit.
    """
    import scipy.sparse as sp

    folder = Path(folder)
    if not folder.is_dir():
        raise MissingDataError(
            f"RLMRec folder {folder} does not exist; expected {_RLMREC_EXPECTED}. Pass data.data_dir=<folder> "
            "or DATA_DIR=<folder>."
        )
    paths = {split: folder / name for split, name in RLMREC_FILES.items()}
    matrices = {split: _load_sparse_pickle(path) for split, path in paths.items()}
    shapes = {split: tuple(int(n) for n in m.shape) for split, m in matrices.items()}
    if len(set(shapes.values())) != 1:
        listing = ", ".join(f"{paths[split].name} {shape}" for split, shape in shapes.items())
        raise DataFormatError(
            f"{folder}: the three matrices must have the same shape (#users, #items), got {listing}; they are "
            "not splits of one dataset."
        )
    num_users, num_items = shapes["train"]
    splits: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for split, matrix in matrices.items():
        binary = sp.coo_matrix((matrix != 0).astype(np.float32))
        binary.sum_duplicates()  # sorts by row, then column
        splits[split] = (binary.row.astype(np.int64), binary.col.astype(np.int64))
    if len(splits["train"][0]) == 0:
        raise DataFormatError(f"{paths['train']} has no non-zero entry; there is nothing to train on.")
    keys = {split: users * num_items + items for split, (users, items) in splits.items()}
    for first, second in (("train", "val"), ("train", "test"), ("val", "test")):
        shared = np.intersect1d(keys[first], keys[second])
        if len(shared):
            user, item = divmod(int(shared[0]), num_items)
            raise DataFormatError(
                f"{paths[first]} and {paths[second]} share {len(shared)} (user, item) pairs, e.g. user {user} "
                f"item {item}; RLMRec's splits are disjoint. This is not an RLMRec split (or the files are of "
                "different datasets)."
            )
    log.info(
        "read %s: %d users, %d items, %s interactions",
        folder,
        num_users,
        num_items,
        "/".join(str(len(users)) for users, _ in splits.values()),
    )
    return SplitMatrices(num_users, num_items, splits)


# ----------------------------------------------------------------------------------------------
# Dispatch from a DataConfig


def raw_folder(cfg: DataConfig) -> Path:
    """Where the raw upstream files of ``cfg`` live: ``data_dir``, else ``<root>/raw/<name>``."""
    return Path(cfg.data_dir) if cfg.data_dir else Path(cfg.root) / "raw" / cfg.name


def _prepared_override(cfg: DataConfig) -> Path | None:
    """The prepared folder that replaces the raw files of an Amazon source, if ``data_dir`` is one."""
    if cfg.data_dir and (Path(cfg.data_dir) / "interactions.csv").is_file():
        return Path(cfg.data_dir)
    return None


def _raw_files(cfg: DataConfig) -> dict[str, tuple[Path, str]]:
    """Role (``reviews``/``meta``) -> (local path, official URL) for an Amazon source."""
    if not cfg.category:
        raise ValueError(
            f"data.category is empty but data.source={cfg.source} needs it to name the upstream files; set "
            "data.category=<Cat>, e.g. Beauty (2014) or Luxury_Beauty (2018), or point data.data_dir at a "
            "prepared folder"
        )
    folder = raw_folder(cfg)
    if cfg.source == "amazon2014":
        (reviews, reviews_url), (meta, meta_url) = amazon2014_files(cfg.category).items()
        return {"reviews": (folder / reviews, reviews_url), "meta": (folder / meta, meta_url)}
    (reviews, reviews_url), (meta, meta_url) = amazon2018_files(cfg.category).items()
    # A-LLMRec's instructions gunzip the meta file; accept that form when it is there.
    plain_meta = folder / meta.removesuffix(".gz")
    meta_path = plain_meta if plain_meta.is_file() else folder / meta
    return {"reviews": (folder / reviews, reviews_url), "meta": (meta_path, meta_url)}


def input_paths(cfg: DataConfig) -> dict[str, Path]:
    """The files :func:`resolve_raw` reads for ``cfg`` (none for ``synthetic``); they may not exist yet."""
    if cfg.source == "synthetic":
        return {}
    if cfg.source == "rlmrec":
        return {split: raw_folder(cfg) / name for split, name in RLMREC_FILES.items()}
    if cfg.source == "prepared":
        if not cfg.data_dir:
            raise ValueError(
                "data.source=prepared needs a folder: pass data.data_dir=<folder> or DATA_DIR=<folder> "
                "(a folder with interactions.csv and items.csv)"
            )
        folder = Path(cfg.data_dir)
    else:
        folder = _prepared_override(cfg)
        if folder is None:
            return {role: path for role, (path, _) in _raw_files(cfg).items()}
    return {"interactions": folder / "interactions.csv", "items": folder / "items.csv"}


def resolve_raw(cfg: DataConfig) -> RawData | SplitMatrices:
    """Read the raw data that ``cfg`` names, downloading missing Amazon files when ``cfg.download``.

    For ``amazon2014``/``amazon2018`` a ``data_dir`` that holds ``interactions.csv`` is read as a
    prepared folder, as is (the recipe is assumed applied already: A-LLMRec's single-pass filter
    is not idempotent, so it must not run twice). ``rlmrec`` gives :class:`SplitMatrices` (nothing
    to download: RLMRec's archive is on Google Drive and archive.org).
    """
    if cfg.source == "synthetic":
        return make_synthetic(
            cfg.synthetic_users, cfg.synthetic_items, cfg.synthetic_min_len, cfg.synthetic_max_len, cfg.synthetic_seed
        )
    if cfg.source == "rlmrec":
        folder = raw_folder(cfg)
        if not cfg.data_dir and not folder.is_dir():
            raise MissingDataError(
                f"data={cfg.name} (source rlmrec) has no data.data_dir and {folder} does not exist; expected "
                f"{_RLMREC_EXPECTED}. Pass data.data_dir=<folder> or DATA_DIR=<folder>."
            )
        return read_rlmrec(folder)
    paths = input_paths(cfg)
    if "interactions" in paths:
        return read_prepared(paths["interactions"].parent)
    files = _raw_files(cfg)
    missing = [(path, url) for path, url in files.values() if not path.is_file()]
    if missing and not cfg.download:
        listing = "; ".join(f"{path} (from {url})" for path, url in missing)
        raise MissingDataError(
            f"missing raw file(s) for data={cfg.name}: {listing}. Download them there, rerun with "
            "data.download=true, or point data.data_dir at a prepared folder."
        )
    for path, url in missing:
        download(url, path, size=KNOWN_SIZES.get(path.name) if cfg.source == "amazon2014" else None)
    reviews, meta = files["reviews"][0], files["meta"][0]
    if cfg.source == "amazon2014":
        return read_amazon2014(reviews, meta)
    return read_amazon2018(reviews, meta, cfg.min_count, cfg.rating_threshold)


def _file_stamp(path: Path) -> dict[str, Any]:
    stat = path.stat() if path.is_file() else None
    return {
        "path": str(path.resolve()),
        "size": stat.st_size if stat else None,
        "mtime_ns": stat.st_mtime_ns if stat else None,
    }


def source_fingerprint(cfg: DataConfig) -> dict[str, Any]:
    """What a processed cache of ``cfg`` depends on, as a JSON-serialisable dict.

    Two configs with equal fingerprints give the same processed data: the source and reader
    version, the input files (absolute path, size, mtime; ``None`` for files not there yet), the
    recipe parameters that the reader applies, and the evaluation-list seed and size. Nothing is
    downloaded or read.
    """
    fingerprint: dict[str, Any] = {
        "reader_version": READER_VERSION,
        "source": cfg.source,
        "eval_seed": cfg.eval_seed,
        "num_eval_negatives": cfg.num_eval_negatives,
    }
    if cfg.source == "synthetic":
        fingerprint["synthetic"] = {
            "users": cfg.synthetic_users,
            "items": cfg.synthetic_items,
            "min_len": cfg.synthetic_min_len,
            "max_len": cfg.synthetic_max_len,
            "seed": cfg.synthetic_seed,
        }
        return fingerprint
    paths = input_paths(cfg)
    fingerprint["inputs"] = {role: _file_stamp(path) for role, path in sorted(paths.items())}
    if cfg.source in ("amazon2014", "amazon2018"):
        fingerprint["category"] = cfg.category
        fingerprint["prepared_override"] = "interactions" in paths
    if cfg.source == "amazon2018" and "interactions" not in paths:
        fingerprint["recipe"] = {"min_count": cfg.min_count, "rating_threshold": float(cfg.rating_threshold)}
    return fingerprint
