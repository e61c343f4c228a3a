"""Run directories: a run never destroys another, finished runs are not retrained, stale upstreams are
errors, and user mistakes end with one message and exit status 2."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lightning_modules.config import compose
from lightning_modules.run import main, run
from lightning_modules.rundir import RunDirError, StageArtifactError
from tests.conftest import tiny_args

ROOT = Path(__file__).resolve().parents[1]


def _digests(run_dir: Path) -> dict[str, str]:
    files = sorted(p for p in run_dir.rglob("*") if p.is_file())
    return {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_a_changed_config_stops_before_touching_the_saved_run(tmp_path: Path) -> None:
    run(compose(tiny_args(tmp_path, "gru4rec", "stage.max_epochs=1")))
    run_dir = tmp_path / "runs" / "synthetic" / "cf_pretrain" / "gru4rec"
    before = _digests(run_dir)
    assert {"metrics.json", "weights.pt", "config.yaml", "upstream.json", "checkpoints/last.ckpt"} <= before.keys()
    with pytest.raises(RunDirError, match=r"differs in stage\.max_epochs \(saved 1, now 2\).*run_name=NAME.*overwrite=true") as err:
        run(compose(tiny_args(tmp_path, "gru4rec", "stage.max_epochs=2")))
    assert "backbone" not in str(err.value).split("differs in")[1].split(".")[0]  # only the key that differs
    assert _digests(run_dir) == before

    sibling = run(compose(tiny_args(tmp_path, "gru4rec", "stage.max_epochs=2", "run_name=two")))
    assert sibling["epochs"] == 2 and (run_dir.parent / "gru4rec-two" / "metrics.json").is_file()
    assert _digests(run_dir) == before

    replaced = run(compose(tiny_args(tmp_path, "gru4rec", "stage.max_epochs=2", "overwrite=true")))
    assert replaced["epochs"] == 2 == json.loads((run_dir / "metrics.json").read_text())["epochs"]


def test_a_finished_run_is_not_trained_again(tmp_path: Path) -> None:
    args = tiny_args(tmp_path, "sasrec", "stage.max_epochs=1")
    first = run(compose(args))
    run_dir = tmp_path / "runs" / "synthetic" / "cf_pretrain" / "sasrec"
    before = _digests(run_dir)
    again = run(compose([*args, "logger=csv"]))  # the logger is not part of what the run computes
    assert again["test/hit@1"] == pytest.approx(first["test/hit@1"]) and again["epochs_trained"] == 1
    assert {k: v for k, v in _digests(run_dir).items() if k != "config.yaml"} == {k: v for k, v in before.items() if k != "config.yaml"}


def test_an_unreadable_saved_config_is_an_error_not_a_fresh_start(tmp_path: Path) -> None:
    args = tiny_args(tmp_path, "sasrec", "stage.max_epochs=1")
    run(compose(args))
    run_dir = tmp_path / "runs" / "synthetic" / "cf_pretrain" / "sasrec"
    (run_dir / "config.yaml").write_text("stage: [unclosed\n")
    before = _digests(run_dir)
    with pytest.raises(RunDirError, match=r"holds results, but cannot read .*config\.yaml.*overwrite=true"):
        run(compose(args))
    assert _digests(run_dir) == before


def test_resume_false_does_not_replace_an_unfinished_run(tmp_path: Path) -> None:
    args = tiny_args(tmp_path, "sasrec", "stage.max_epochs=1")
    run(compose(args))
    run_dir = tmp_path / "runs" / "synthetic" / "cf_pretrain" / "sasrec"
    (run_dir / "metrics.json").unlink()  # as if it had died before the end
    with pytest.raises(RunDirError, match="resume=false would replace them"):
        run(compose([*args, "resume=false"]))
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()


def test_a_stage_on_a_retrained_upstream_is_stale_until_rebuilt(tmp_path: Path) -> None:
    cf = tiny_args(tmp_path, "sasrec", "stage.max_epochs=1", "text_encoder=hashing")
    stage1 = [*cf, "stage=align_stage1"]
    run(compose(cf))
    run(compose(stage1))
    s1_dir = tmp_path / "runs" / "synthetic" / "align_stage1" / "sasrec"
    recorded = json.loads((s1_dir / "upstream.json").read_text())["cf_pretrain"]
    assert recorded["run_dir"] == str(tmp_path / "runs" / "synthetic" / "cf_pretrain" / "sasrec")
    assert recorded["config"]["stage"]["max_epochs"] == 1 and len(recorded["weights_sha256"]) == 64

    run(compose([*cf, "stage.lr=0.01", "overwrite=true"]))  # cf_pretrain retrained under the finished stage 1
    before = _digests(s1_dir)
    with pytest.raises(RunDirError, match=r"stale run: .*cf_pretrain/sasrec has been retrained since.*make align-stage1 "
                                          r"DATASET=synthetic BACKBONE=sasrec ARGS=\"rebuild_stale=true"):
        run(compose(stage1))
    stage2 = [*cf, "stage=align_stage2", "llm.name=tiny"]
    with pytest.raises(StageArtifactError, match=r"align_stage1/sasrec is stale: .*retrained since.*rebuild_stale=true"):
        run(compose(stage2))
    assert _digests(s1_dir) == before
    assert main(stage1) == 2  # the same, as one message and exit status 2

    rebuilt = run(compose([*stage1, "rebuild_stale=true"]))
    assert rebuilt["epochs_trained"] == 1
    now = json.loads((s1_dir / "upstream.json").read_text())["cf_pretrain"]
    assert now["weights_sha256"] != recorded["weights_sha256"] and now["config"]["stage"]["lr"] == 0.01


def test_rebuild_stale_does_not_replace_a_run_of_another_config(tmp_path: Path) -> None:
    run(compose(tiny_args(tmp_path, "sasrec", "stage.max_epochs=1")))
    with pytest.raises(RunDirError, match="differs in stage.lr"):
        run(compose(tiny_args(tmp_path, "sasrec", "stage.max_epochs=1", "stage.lr=0.01", "rebuild_stale=true")))


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_train_all_rebuilds_stale_stages_and_single_targets_do_not(tmp_path: Path) -> None:
    out = subprocess.run(["make", "-n", "train-all", f"RUNS={tmp_path}"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    chained = [line for line in out.splitlines() if "lightning_modules.run" in line]
    assert len(chained) == 4 and all(("rebuild_stale=true" in line) == ("stage=cf_pretrain" not in line) for line in chained)
    single = subprocess.run(["make", "-n", "align-stage1"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "rebuild_stale" not in single


def test_a_data_error_is_one_message_naming_the_file_and_exit_status_2(tmp_path: Path) -> None:
    folder = tmp_path / "shop"
    folder.mkdir()
    (folder / "interactions.csv").write_text("user_id,item_id,timestamp\n")
    (folder / "items.csv").write_text("item_id,title\ni1,A title\n")
    env = {**os.environ, "WANDB_MODE": "disabled"}
    cmd = [sys.executable, "-m", "lightning_modules.run", "data=shop", f"data.data_dir={folder}", f"data.root={tmp_path / 'data'}",
           f"paths.runs={tmp_path / 'runs'}", "logger=none"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert f"{folder / 'interactions.csv'} has no interaction rows after its header" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists()  # a run that fails to build leaves nothing behind
