"""The one entry point: ``python -m lightning_modules.run [group=option ...] [key=value ...]`` (also ``llmrec``).

Examples::

    python -m lightning_modules.run data=beauty backbone=sasrec data.data_dir=../shared/data/amazon/Beauty/prepared
    python -m lightning_modules.run data=synthetic backbone=gru4rec backbone.loss=bce stage.max_epochs=3

Groups (``conf/<group>/<option>.yaml``): data, backbone, stage, llm, text_encoder, prompt, trainer,
logger, profile. Every other argument is an OmegaConf dotlist override (``backbone.hidden_dim=128``),
which is also what W&B sweep agents pass. Each stage lives in its own module
(``lightning_modules/<stage>.py``: config, LightningModule, ``build_<stage>``, ``run_<stage>``) and
is listed in :data:`lightning_modules.stages.STAGES`; this module composes the config and dispatches.

Mistakes in the config, in the data files or in the run directories end with one message and exit
status 2, never a traceback.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch

from datamodules.download import DownloadError
from datamodules.sources import DataFormatError
from lightning_modules.config import RunConfig, compose
from lightning_modules.rundir import RunDirError, StageArtifactError
from lightning_modules.stages import STAGES

log = logging.getLogger("llmrec")

SUMMARY_KEYS = (
    "test/hit@1", "test/ndcg@10", "test/full/hit@10", "test/full/ndcg@10", "test/full/recall@20",
    "test/generate/hit@1", "test/llm_only/hit@1", "test/backbone/full/ndcg@10", "test/interpretability/acc@1",
    "test/interpretability_random/acc@1", "test/interpretability_heldout/acc@1", "test/interpretability_probe_heldout/acc@1",
    "test/judge_heldout/acc@1", "test/judge_random/acc@1", "test/control/full/ndcg@10", "test/ratio/control/full/ndcg@10",
)
# What a user can fix from the message alone: a traceback would only hide it.
USER_ERRORS = (DataFormatError, DownloadError, RunDirError, StageArtifactError)


def run(cfg: RunConfig) -> dict[str, Any]:
    """Run the stage of ``cfg`` and return its metrics (those saved, for a finished run)."""
    if cfg.trainer.num_threads:
        torch.set_num_threads(cfg.trainer.num_threads)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    return STAGES[cfg.stage.name].run(cfg)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = compose(sys.argv[1:] if argv is None else argv)
    except ValueError as err:
        log.error("%s", err)
        return 2
    sweep, run_id = os.environ.get("WANDB_SWEEP_ID"), os.environ.get("WANDB_RUN_ID")
    if sweep and run_id and not cfg.paths.run_dir:  # a W&B sweep agent's trial: a run directory of its own
        cfg.paths.run_dir = str(Path(cfg.paths.runs) / "sweeps" / sweep / run_id)
    try:
        metrics = run(cfg)
    except USER_ERRORS as err:
        log.error("%s", err)
        return 2
    summary = {k: round(v, 4) for k, v in metrics.items() if k in SUMMARY_KEYS and v is not None}
    log.info("%s %s on %s: %s", cfg.stage.name, cfg.backbone.name, cfg.data.name, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
