"""A run killed after an epoch and started again with the same command continues from ``last.ckpt``
and ends with the metrics of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import torch

from lightning_modules.config import compose
from lightning_modules.run import run
from tests.conftest import llm_args, tiny_args

KILL = Path(__file__).with_name("kill_run.py")
# Wall-clock figures, and what tells the two runs apart by design.
TIMING = {"train_seconds", "seconds_per_epoch", "val_seconds_per_epoch", "test_seconds", "epochs_trained",
          "resumed_from_epoch", "train_samples_per_second", "train_tokens_per_second", "test_users_per_second"}


def _kill_during_epoch(epoch: int, args: list[str]) -> None:
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(KILL), str(epoch), *args], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]


def _results(metrics: dict) -> dict:
    """The non-timing values, NaN (an empty cold/warm subset) as None so that equal runs compare equal."""
    return {k: None if v != v else v for k, v in metrics.items() if k not in TIMING}


def _resume_matches_an_uninterrupted_run(args: list[str], run_dir: Path, straight_dir: Path, epochs: int) -> dict:
    _kill_during_epoch(1, args)
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert not (run_dir / "metrics.json").exists()
    # The killed run trained on 1 thread (OMP_NUM_THREADS=1); so do these, or a matmul's reduction
    # order, and with it the last bits of the weights, would differ between the halves of the resumed run.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        resumed = run(compose(args))
        straight = run(compose([*args, f"paths.run_dir={straight_dir}"]))
    finally:
        torch.set_num_threads(threads)
    assert resumed["resumed_from_epoch"] == 1 and resumed["epochs_trained"] == epochs - 1 and resumed["epochs"] == epochs
    assert straight["resumed_from_epoch"] == 0 and straight["epochs_trained"] == epochs
    assert resumed["global_step"] == straight["global_step"] > 0
    assert _results(resumed) == _results(straight)
    assert json.loads((run_dir / "metrics.json").read_text())["test/hit@1"] == straight["test/hit@1"]
    return resumed


def test_cf_pretrain_killed_after_an_epoch_resumes_to_the_same_metrics(tmp_path: Path) -> None:
    # dropout on, so a resume that did not restore the random state would train differently
    args = tiny_args(tmp_path, "sasrec", "stage.max_epochs=3", "backbone.dropout=0.3")
    run_dir = tmp_path / "runs" / "synthetic" / "cf_pretrain" / "sasrec"
    _resume_matches_an_uninterrupted_run(args, run_dir, tmp_path / "straight", epochs=3)


def test_align_stage2_killed_after_an_epoch_resumes_to_the_same_metrics(tmp_path: Path, tiny_llm_dir: Path) -> None:
    base = llm_args(tmp_path, tiny_llm_dir, "stage.max_epochs=1")
    run(compose(base))
    run(compose([*base, "stage=align_stage1"]))
    args = llm_args(tmp_path, tiny_llm_dir, "stage=align_stage2", "stage.max_epochs=2", "stage.max_train_users=16",
                    "stage.max_eval_users=6", "stage.max_new_tokens=8")
    run_dir = tmp_path / "runs" / "synthetic" / "align_stage2" / "sasrec" / "tiny"
    _resume_matches_an_uninterrupted_run(args, run_dir, tmp_path / "straight", epochs=2)
    predictions = [(tmp_path / d / "predictions.jsonl").read_text() for d in (run_dir, tmp_path / "straight")]
    assert predictions[0] == predictions[1]
