"""W&B sweeps: the specs validate against W&B's schema, trials run the agent's command, the local
engine runs trials and tabulates them, and a W&B agent's trial gets a run directory of its own."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from lightning_modules.sweep import load_spec, run_local, trial_command, with_overrides
from tests.conftest import tiny_args

SPECS = sorted((Path(__file__).resolve().parents[1] / "conf" / "sweep").glob("*.yaml"))


def test_there_are_specs_for_cf_pretrain_and_align_stage1():
    assert {p.stem for p in SPECS} >= {"cf_pretrain_sasrec", "align_stage1_sasrec"}


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_specs_validate_against_wandb_schema(path: Path):
    from lightning_modules.sweep import _sweeps

    sweeps = _sweeps()
    spec = load_spec(path)  # raises on any schema violation
    assert sweeps.schema_violations_from_proposed_config(spec) == []
    assert spec["metric"] == {"name": "val/ndcg@10", "goal": "maximize"}
    assert spec["command"][-1] == "${args_no_hyphens}" and "lightning_modules.run" in spec["command"]


def test_an_invalid_spec_is_a_clear_error(tmp_path: Path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"method": "annealing", "parameters": {"stage.lr": {"min": 0.1}}}))
    with pytest.raises(ValueError, match=r"bad.yaml is not a valid W&B sweep spec(.|\n)*annealing"):
        load_spec(path)


def test_trial_command_fills_the_macros_as_the_agent_does():
    command = with_overrides(["${env}", "python", "-m", "lightning_modules.run", "stage=cf_pretrain", "${args_no_hyphens}"], ["data=beauty"])
    argv = trial_command(command, {"stage.lr": 0.01, "backbone.hidden_dim": 32})
    # fixed overrides come before the sweep's parameters, which therefore win
    assert argv == ["/usr/bin/env", "python", "-m", "lightning_modules.run", "stage=cf_pretrain", "data=beauty", "stage.lr=0.01", "backbone.hidden_dim=32"]


def test_local_sweep_runs_trials_and_writes_a_summary(tmp_path: Path):
    spec = load_spec(SPECS[[p.stem for p in SPECS].index("cf_pretrain_sasrec")])
    overrides = [a for a in tiny_args(tmp_path) if not a.startswith(("backbone=", "logger="))]
    rows = run_local(spec, overrides, count=2, out=tmp_path / "sweep")
    assert [r["state"] for r in rows] == ["finished", "finished"]
    assert rows[0]["params"] != rows[1]["params"]
    for n, row in enumerate(rows):  # each trial its own run directory, with its proposed values
        saved = yaml.safe_load((tmp_path / "sweep" / f"trial-{n:03d}" / "config.yaml").read_text())
        assert saved["stage"]["lr"] == pytest.approx(row["params"]["stage.lr"])
        assert saved["backbone"]["hidden_dim"] == row["params"]["backbone.hidden_dim"]
        metrics = json.loads((tmp_path / "sweep" / f"trial-{n:03d}" / "metrics.json").read_text())
        assert metrics["best_val/ndcg@10"] == pytest.approx(row["val/ndcg@10"])
        # the trial's score is its best epoch, as logged per epoch in its CSV
        with open(tmp_path / "sweep" / f"trial-{n:03d}" / "csv" / "metrics.csv", newline="") as fh:
            epochs = [float(r["val/ndcg@10"]) for r in csv.DictReader(fh) if r.get("val/ndcg@10")]
        assert len(epochs) >= 1 and row["val/ndcg@10"] == pytest.approx(max(epochs))
    table = (tmp_path / "sweep" / "summary.md").read_text().splitlines()
    assert table[0].split(" | ")[-3:] == ["val/ndcg@10", "state", "seconds |"] and len(table) == 2 + 2
    assert (tmp_path / "sweep" / "summary.csv").read_text().count("\n") == 3


def test_a_wandb_agent_trial_writes_its_own_run_directory(tmp_path: Path, monkeypatch):
    from lightning_modules.run import main

    monkeypatch.setenv("WANDB_SWEEP_ID", "abc123")
    monkeypatch.setenv("WANDB_RUN_ID", "run7")
    assert main(tiny_args(tmp_path, "sasrec", "stage.max_epochs=1")) == 0
    run_dir = tmp_path / "runs" / "sweeps" / "abc123" / "run7"
    assert (run_dir / "metrics.json").is_file()
    assert not (tmp_path / "runs" / "synthetic").exists()
