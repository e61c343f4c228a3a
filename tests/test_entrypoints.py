"""The Makefile maps its variables onto the entry point; the report tool reads run directories."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from benchmarks.report import table

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_variables_become_overrides() -> None:
    out = subprocess.run(
        ["make", "-n", "cf-pretrain", "DATASET=toys", "BACKBONE=ncf", "DATA_DIR=/d", "SEED=3", 'ARGS=stage.lr=0.01 backbone.dropout=0.1'],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for part in ("-m lightning_modules.run", "stage=cf_pretrain", "data=toys", "backbone=ncf", "seed=3",
                 "data.data_dir=/d", "stage.lr=0.01", "backbone.dropout=0.1"):
        assert part in out, part


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_train_all_is_a_file_target_that_skips_finished_stages(tmp_path: Path) -> None:
    cmd = ["make", "-n", "train-all", f"RUNS={tmp_path}", "LLM=smollm2", "PROFILE=quick"]

    def planned() -> list[str]:
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True).stdout
        return [stage for stage in ("cf_pretrain", "align_stage1", "align_stage2", "face") if f"stage={stage} " in out]

    assert planned() == ["cf_pretrain", "align_stage1", "align_stage2", "face"]
    assert "profile=quick" in subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True).stdout
    for stage, rest in (("cf_pretrain/sasrec", ["align_stage1", "align_stage2", "face"]),
                        ("align_stage1/sasrec", ["align_stage2", "face"]),
                        ("align_stage2/sasrec/smollm2", ["face"]), ("face/sasrec/smollm2", [])):
        done = tmp_path / "beauty" / stage / "metrics.json"
        done.parent.mkdir(parents=True)
        done.write_text("{}")
        assert planned() == rest


def test_report_table_lists_every_run(tmp_path: Path) -> None:
    for name, hit in (("sasrec", 0.36), ("pop", 0.16)):
        run_dir = tmp_path / name
        run_dir.mkdir()
        (run_dir / "metrics.json").write_text(json.dumps({"backbone": name, "loss": "ce", "test/hit@1": hit, "epochs": 3}))
    lines = table(tmp_path).splitlines()
    assert lines[0].startswith("| model | Hit@1")
    assert any(line.startswith("| sasrec (ce) | 0.3600 |") for line in lines)
    assert any(line.startswith("| pop (ce) | 0.1600 |") for line in lines)
