"""Experiment loggers: CSV always available, W&B offline unless an account is configured."""

from __future__ import annotations

import logging
import netrc
import os
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger, Logger

log = logging.getLogger(__name__)


def wandb_logged_in() -> bool:
    """True when an API key is in the environment or in ``~/.netrc`` for api.wandb.ai."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def resolve_wandb_mode(mode: str = "") -> str:
    """``WANDB_MODE`` when set (tests set ``disabled``), else ``mode``, else online iff logged in."""
    return os.environ.get("WANDB_MODE") or mode or ("online" if wandb_logged_in() else "offline")


def build_loggers(
    name: str, save_dir: Path, run_name: str, group: str, job_type: str, project: str, entity: str = "", mode: str = "", config: dict | None = None
) -> list[Logger]:
    """``none`` -> []; ``csv`` -> a CSVLogger in ``save_dir``; ``wandb`` -> W&B (+ CSV).

    W&B mode: ``WANDB_MODE`` wins when set (tests set ``disabled``); then ``mode``; otherwise
    online when logged in, else offline (runs land in ``save_dir/wandb`` for a later ``wandb sync``).
    """
    if name == "none":
        return []
    loggers: list[Logger] = [CSVLogger(save_dir=str(save_dir), name="csv", version="")]
    if name == "wandb":
        from lightning.pytorch.loggers import WandbLogger

        resolved = resolve_wandb_mode(mode)
        if resolved == "offline":
            log.info("W&B is offline (no account configured); sync later with `wandb sync %s/wandb`", save_dir)
        loggers.append(
            WandbLogger(
                project=project,
                entity=entity or None,
                name=run_name,
                group=group,
                job_type=job_type,
                save_dir=str(save_dir),
                mode=resolved,
                config=config,
            )
        )
    return loggers


def log_run_results(loggers: list[Logger], metrics: dict, files: list[Path], artifact_name: str) -> None:
    """For each W&B logger: the final metrics as run summary values and as a ``final_metrics`` table,
    and the run's files (``metrics.json``, ``config.yaml``, ``descriptors.csv``, ...) as one
    ``results`` artifact. Other loggers have nothing to do here.

    ``best_<metric>`` also becomes the summary value of ``<metric>``: W&B sweeps rank runs by their
    summary, which should be the tested checkpoint's value, not the last epoch's."""
    runs = [logger.experiment for logger in loggers if type(logger).__name__ == "WandbLogger"]
    if not runs:
        return
    import wandb

    numeric = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    for run in runs:
        run.summary.update(numeric)
        run.summary.update({k.removeprefix("best_"): v for k, v in numeric.items() if k.startswith("best_")})
        run.log({"final_metrics": wandb.Table(columns=["metric", "value"], data=sorted(map(list, numeric.items())))})
        artifact = wandb.Artifact(artifact_name, type="results", metadata={k: v for k, v in metrics.items() if not isinstance(v, float)})
        for path in files:
            if path.is_file():
                artifact.add_file(str(path))
        run.log_artifact(artifact)
