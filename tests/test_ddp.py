"""Multi-process CPU DDP evaluation gives exactly the metrics of one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("ddp_eval.py")


def _run(tmp_path: Path, devices: int, backbone: str = "sasrec", *overrides: str) -> dict[str, float]:
    out = tmp_path / f"metrics-{devices}.json"
    # A clean environment: no pytest or Lightning variables leak into the launched ranks.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "LOCAL_RANK", "RANK", "WORLD_SIZE", "MASTER_", "PL_"))}
    env.update({"WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", "MASTER_PORT": str(29500 + os.getpid() % 1000 + devices)})
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(out), str(tmp_path / "data"), str(devices), backbone, *overrides],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.ddp
def test_two_process_ddp_evaluation_matches_one_process(tmp_path: Path) -> None:
    single = _run(tmp_path, 1)
    double = _run(tmp_path, 2)
    assert "test/hit@1" in single and "test/full/ndcg@10" in single
    # Exactly equal: sum states, and every user evaluated on exactly one rank.
    assert double == single
