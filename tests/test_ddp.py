"""Multi-process CPU DDP: evaluation gives exactly the metrics of one process, whole stages train on
disjoint users per rank and their tests equal a 1-process test of the same checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("ddp_eval.py")
RUN_SCRIPT = Path(__file__).with_name("ddp_run.py")


def _script(*args: object, port_offset: int = 0) -> None:
    """Run a DDP script in a clean environment: no pytest or Lightning variables leak into the ranks."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "LOCAL_RANK", "RANK", "WORLD_SIZE", "MASTER_", "PL_"))}
    env.update({"WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", "MASTER_PORT": str(29500 + os.getpid() % 1000 + port_offset)})
    proc = subprocess.run([sys.executable, *map(str, args)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _run(tmp_path: Path, devices: int, backbone: str = "sasrec", *overrides: str) -> dict[str, float]:
    out = tmp_path / f"metrics-{devices}.json"
    _script(SCRIPT, out, tmp_path / "data", devices, backbone, *overrides, port_offset=devices)
    return json.loads(out.read_text())


@pytest.mark.ddp
# LightGCN: a sparse buffer DDP must not broadcast (about 30 s each, so LightGCN's runs in make test-full)
@pytest.mark.parametrize("backbone", ["sasrec", pytest.param("lightgcn", marks=pytest.mark.slow)])
def test_two_process_ddp_evaluation_matches_one_process(tmp_path: Path, backbone: str) -> None:
    single = _run(tmp_path, 1, backbone)
    double = _run(tmp_path, 2, backbone)
    assert "test/hit@1" in single and "test/full/ndcg@10" in single
    # Exactly equal: sum states, and every user evaluated on exactly one rank.
    assert double == single


@pytest.mark.slow
@pytest.mark.ddp
def test_two_process_stage_runs_test_exactly_as_one_process_on_their_checkpoint(tmp_path: Path) -> None:
    """cf_pretrain then align_stage1 through the entry point on 2 CPU ranks (gloo); each run's test
    metrics (rank 0's metrics.json) equal a 1-process test of the checkpoint the run chose."""
    for offset, stage in enumerate(("cf_pretrain", "align_stage1")):
        _script(RUN_SCRIPT, "train", tmp_path, 2, stage, port_offset=10 + offset)
        run_dir = tmp_path / "runs" / "synthetic" / stage / "sasrec"
        written = json.loads((run_dir / "metrics.json").read_text())
        assert written["epochs"] == 2 and (run_dir / "checkpoints" / "best.ckpt").is_file()
        out = tmp_path / f"eval-{stage}.json"
        _script(RUN_SCRIPT, "eval", tmp_path, stage, out)
        single = json.loads(out.read_text())
        assert "test/hit@1" in single and ("test/full/ndcg@10" in single or stage != "cf_pretrain")
        assert {k: v for k, v in written.items() if k.startswith("test/")} == single


@pytest.mark.slow
@pytest.mark.ddp
@pytest.mark.parametrize("stage", ["cf_pretrain", "align_stage1"])
def test_two_ranks_train_on_disjoint_users_in_an_epoch(tmp_path: Path, stage: str) -> None:
    if stage == "align_stage1":  # stage 1 starts from a cf_pretrain run
        _script(RUN_SCRIPT, "train", tmp_path, 1, "cf_pretrain")
    prefix = tmp_path / "users"
    _script(RUN_SCRIPT, "users", tmp_path, 2, stage, prefix, port_offset=20)
    batches = [json.loads(Path(f"{prefix}-rank{r}.json").read_text()) for r in range(2)]
    assert batches[0] and len(batches[0]) == len(batches[1])  # as many steps: no rank waits at a collective
    ranks = [[user for batch in rank for user in batch] for rank in batches]
    for users in ranks:
        assert len(users) == len(set(users))  # every user at most once per epoch
    assert not set(ranks[0]) & set(ranks[1])
    # together they cover the 301 users but for the tail batch that does not divide evenly
    assert 301 - 2 * 32 < len(set(ranks[0]) | set(ranks[1])) <= 301
