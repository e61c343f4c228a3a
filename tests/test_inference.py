"""Loading a finished run and asking it: the Python API and the ``llmrec`` command line agree, answer in
raw ids and titles, and every bad input is one message and exit status 2."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from lightning_modules.cli import main as cli
from lightning_modules.config import compose
from lightning_modules.inference import RequestError, load_run
from lightning_modules.run import run
from tests.conftest import llm_args, tiny_args
from tests.test_face import _face_args, _face_stage


@pytest.fixture(scope="module")
def cf_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cf")
    run(compose(tiny_args(root, "sasrec", "stage.max_epochs=3", "logger=csv")))
    return root / "runs" / "synthetic" / "cf_pretrain" / "sasrec"


def _sequence(loaded, user: str) -> set[str]:
    data = loaded.data
    u = data.user_raw.index(user)
    return {data.item_raw[i] for i in data.seq_items[data.seq_offsets[u] : data.seq_offsets[u + 1]].tolist()}


def test_recommend_from_python_and_the_command_line_agree(cf_run: Path, capsys) -> None:
    loaded = load_run(cf_run)
    user = loaded.ids("users", 3)[2]
    recs = loaded.recommend(user=user, k=5)
    assert len(recs) == 5 and all(r.title for r in recs) and [r.score for r in recs] == sorted((r.score for r in recs), reverse=True)
    assert not {r.item_id for r in recs} & _sequence(loaded, user)  # nothing the user already has
    capsys.readouterr()
    assert cli(["recommend", str(cf_run), "--user", user, "--k", "5", "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["item_id"] for line in lines] == [r.item_id for r in recs] and [line["rank"] for line in lines] == [1, 2, 3, 4, 5]
    assert cli(["recommend", str(cf_run), "--user", user, "--k", "5"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["rank", "item_id", "score", "title"] and len(table) == 6 and recs[0].item_id in table[1]
    many = loaded.recommend(user=loaded.ids("users", 3), k=2)
    assert len(many) == 3 and [r.item_id for r in many[2]] == [r.item_id for r in recs[:2]]  # batched = one at a time


def test_recommend_for_an_unseen_history(cf_run: Path, capsys) -> None:
    loaded = load_run(cf_run)
    history = loaded.ids("items", 3)
    recs = loaded.recommend(history=history, k=4)
    assert len(recs) == 4 and not {r.item_id for r in recs} & set(history)
    capsys.readouterr()
    assert cli(["recommend", str(cf_run), "--history", ",".join(history), "--k", "4", "--json"]) == 0
    assert [json.loads(line)["item_id"] for line in capsys.readouterr().out.splitlines()] == [r.item_id for r in recs]


@pytest.mark.parametrize(
    "argv,message",
    [
        (["recommend", "{run}", "--user", "nobody"], r"unknown user id 'nobody': .* knows 120 users; list some with `llmrec ids .* --users"),
        (["recommend", "{run}", "--history", "i1,no-such-item"], r"unknown item id 'no-such-item'.*--items"),
        (["recommend", "{run}", "--user", "u1", "--k", "0"], r"k must be in 1\.\.40"),
        (["recommend", "{run}", "--user", "u1", "--mode", "generate"], r"--candidates and --mode are for align_stage2 runs"),
        (["explain", "{run}", "--user", "u1"], r"is a cf_pretrain run; explain needs a face run"),
        (["recommend", "{parent}", "--user", "u1"], r"is not a finished run .*finished runs below it"),
    ],
)
def test_bad_requests_are_one_message_and_exit_status_2(cf_run: Path, caplog, argv: list[str], message: str) -> None:
    import re

    argv = [a.format(run=cf_run, parent=cf_run.parent) for a in argv]
    assert cli(argv) == 2
    assert re.search(message, caplog.text), caplog.text
    assert "Traceback" not in caplog.text


def test_ids_lists_what_the_run_knows(cf_run: Path, capsys) -> None:
    capsys.readouterr()
    assert cli(["ids", str(cf_run), "--items", "--limit", "3"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert len(rows) == 3 and all(len(r.split("\t")) == 2 and r.split("\t")[1] for r in rows)  # id, title
    assert cli(["ids", str(cf_run), "--users", "--limit", "0"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 120


def test_an_intermediate_or_stale_run_is_refused(tmp_path: Path, caplog) -> None:
    base = tiny_args(tmp_path, "sasrec", "stage.max_epochs=1", "text_encoder=hashing")
    run(compose(base))
    run(compose([*base, "stage=align_stage1"]))
    stage1 = tmp_path / "runs" / "synthetic" / "align_stage1" / "sasrec"
    with pytest.raises(RequestError, match="is an align_stage1 run, an intermediate stage"):
        load_run(stage1)
    run(compose([*base, "stage.lr=0.01", "overwrite=true"]))  # retrain its upstream
    assert cli(["recommend", str(stage1), "--user", "u1"]) == 2
    assert "is stale: " in caplog.text and "retrained since" in caplog.text


def test_stage2_ranks_the_test_candidates_as_its_evaluation_did(tmp_path: Path, tiny_llm_dir: Path, capsys) -> None:
    base = llm_args(tmp_path, tiny_llm_dir, "stage.max_epochs=1")
    run(compose(base))
    run(compose([*base, "stage=align_stage1"]))
    run(compose([*base, "stage=align_stage2", "stage.max_train_users=16", "stage.max_eval_users=6", "stage.max_new_tokens=8"]))
    run_dir = tmp_path / "runs" / "synthetic" / "align_stage2" / "sasrec" / "tiny"
    loaded = load_run(run_dir)
    records = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    users = [loaded.data.user_raw[r["user"]] for r in records]
    rankings = loaded.recommend(user=users, mode="generate")
    for record, ranking in zip(records, rankings):
        columns = loaded.data.test_candidates[record["user"]].tolist()  # column order, the target first
        by_item = {r.item_id: r.score for r in ranking}
        got = [by_item[loaded.data.item_raw[i]] for i in columns]
        assert got == pytest.approx(record["scores"], abs=2e-3)  # the saved scores are rounded to 4 decimals
        saved = sorted(range(len(columns)), key=lambda j: -record["scores"][j])
        if len(set(record["scores"])) == len(columns):  # the saved ranking, wherever rounding left no ties
            assert [r.item_id for r in ranking] == [loaded.data.item_raw[columns[j]] for j in saved]
        assert ranking.answer == record["answer"]
    capsys.readouterr()  # what the runs printed
    assert cli(["recommend", str(run_dir), "--user", users[0], "--k", "3", "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["item_id"] for line in lines] == [r.item_id for r in rankings[0][:3]]
    chosen = [loaded.data.item_raw[i] for i in loaded.data.test_candidates[records[0]["user"]].tolist()[:3]]
    assert sorted(r.item_id for r in loaded.recommend(user=users[0], candidates=chosen)) == sorted(chosen)


def test_face_describes_as_its_descriptors_csv_and_explains(tmp_path: Path, tiny_word_llm_dir, tiny_sentence_encoder_dir, capsys) -> None:
    run(compose(_face_args(tmp_path, tiny_word_llm_dir, tiny_sentence_encoder_dir, "stage=cf_pretrain")))
    run(compose(_face_stage(tmp_path, tiny_word_llm_dir, tiny_sentence_encoder_dir, "stage.max_epochs=1")))
    run_dir = tmp_path / "runs" / "synthetic" / "face" / "sasrec" / "tiny"
    with open(run_dir / "descriptors.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    item = next(r for r in rows if r["entity_type"] == "item")
    user = next(r for r in rows if r["entity_type"] == "user")
    loaded = load_run(run_dir)
    assert loaded.describe(item=item["raw_id"]) == item["words"].split()
    assert loaded.describe(user=user["raw_id"]) == user["words"].split()
    recs = loaded.recommend(user=user["raw_id"], k=3)
    assert len(recs) == 3 and all(len(r.words) == 4 for r in recs)
    capsys.readouterr()
    assert cli(["explain", str(run_dir), "--user", user["raw_id"], "--k", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"user {user['raw_id']}: {user['words']}" and sum(line.strip().startswith("words:") for line in out) == 3


def test_report_writes_a_page_with_its_plots(cf_run: Path) -> None:
    from benchmarks.report import main as report

    root = cf_run.parents[1]  # runs/synthetic
    assert report([str(root)]) == 0
    page = (root / "report" / "index.html").read_text()
    for name in ("hit1.png", "ndcg10.png", "curves.png"):
        assert f'src="{name}"' in page and (root / "report" / name).stat().st_size > 1000


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (Debian package chromium)")
def test_the_report_opens_in_a_browser_with_every_image_loaded(cf_run: Path, tmp_path: Path) -> None:
    from benchmarks.report import main as report

    root = cf_run.parents[1]
    assert report([str(root)]) == 0
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", "--dump-dom"]
    out = subprocess.run([CHROMIUM, *flags, (root / "report" / "index.html").as_uri()], capture_output=True, text=True, timeout=120)
    assert 'data-images="3/3"' in out.stdout, out.stderr[-2000:]
