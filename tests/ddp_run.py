"""Multi-process CPU DDP runs of whole stages on synthetic data (a script, not a test).

Started by ``tests/test_ddp.py`` in a clean environment: Lightning's ``ddp`` strategy re-executes
the command line for every rank, which must not be pytest itself (see DESIGN.md pitfalls).

    python tests/ddp_run.py train ROOT DEVICES STAGE       # the entry point, as `make` runs it
    python tests/ddp_run.py eval ROOT STAGE OUT_JSON       # 1 process tests that run's best checkpoint
    python tests/ddp_run.py users ROOT DEVICES STAGE OUT   # 1 epoch; OUT-rank<r>.json: each rank's batches of users
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def stage_args(root: str, stage: str, devices: int) -> list[str]:
    """The stage on 301 synthetic users (an odd count: uneven evaluation shards), ``devices`` CPU processes."""
    trainer = ["trainer=ddp", "trainer.accelerator=cpu", f"trainer.devices={devices}"] if devices > 1 else ["trainer=cpu"]
    return [
        f"stage={stage}",
        "data=synthetic",
        "backbone=sasrec",
        "text_encoder=hashing",
        "logger=none",
        f"data.root={root}/data",
        f"paths.runs={root}/runs",
        "data.synthetic_users=301",
        "data.synthetic_items=40",
        "data.batch_size=32",
        "stage.max_epochs=2",
        "trainer.enable_progress_bar=false",
        *trainer,
    ]


def _build(cfg):
    from lightning_modules.align_stage1 import build_align_stage1
    from lightning_modules.cf_pretrain import build_cf_pretrain

    return {"cf_pretrain": build_cf_pretrain, "align_stage1": build_align_stage1}[cfg.stage.name](cfg)


def evaluate(root: str, stage: str, out: Path) -> None:
    """Test the DDP run's best checkpoint in one process, as the run itself tested it."""
    import lightning as L

    from callbacks.ranking import RankingMetricsCallback
    from lightning_modules.config import compose

    cfg = compose(stage_args(root, stage, 1))
    datamodule, module = _build(cfg)
    trainer = L.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
        use_distributed_sampler=False, callbacks=[RankingMetricsCallback()],
    )
    trainer.test(module, datamodule=datamodule, ckpt_path=str(cfg.run_dir / "checkpoints" / "best.ckpt"), verbose=False)
    out.write_text(json.dumps({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}, indent=2))


def record_users(root: str, devices: int, stage: str, out: str) -> None:
    """One training epoch; every rank writes the user ids of the batches it trained on."""
    import lightning as L

    from lightning_modules.config import compose

    class Users(L.Callback):
        def __init__(self) -> None:
            self.batches: list[list[int]] = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self.batches.append(batch.user_ids.tolist())

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            Path(f"{out}-rank{trainer.global_rank}.json").write_text(json.dumps(self.batches))

    cfg = compose(stage_args(root, stage, devices))
    datamodule, module = _build(cfg)
    trainer = L.Trainer(
        accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto", max_epochs=1,
        limit_val_batches=0, logger=False, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, use_distributed_sampler=False, callbacks=[Users()],
    )
    trainer.fit(module, datamodule=datamodule)


def main() -> None:
    mode, root = sys.argv[1], sys.argv[2]
    if mode == "train":
        from lightning_modules.run import main as run_main

        sys.exit(run_main(stage_args(root, sys.argv[4], int(sys.argv[3]))))
    elif mode == "eval":
        evaluate(root, sys.argv[3], Path(sys.argv[4]))
    elif mode == "users":
        record_users(root, int(sys.argv[3]), sys.argv[4], sys.argv[5])
    else:
        raise SystemExit(f"unknown mode {mode!r}: train | eval | users")


if __name__ == "__main__":
    main()
