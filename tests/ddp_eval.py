"""Evaluate one fixed model with N CPU processes and write the test metrics (a script, not a test).

Started by ``tests/test_ddp.py`` in a clean environment: Lightning's ``ddp`` strategy re-executes
the command line for every rank, which must not be pytest itself (see DESIGN.md pitfalls).

    python tests/ddp_eval.py OUT_JSON ROOT DEVICES [BACKBONE [OVERRIDE ...]]

Overrides (``data=rlmrec_x data.data_dir=...``) come after the synthetic defaults, so they win.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lightning as L  # noqa: E402
import torch  # noqa: E402

from callbacks.ranking import RankingMetricsCallback  # noqa: E402
from lightning_modules.cf_pretrain import build_cf_pretrain  # noqa: E402
from lightning_modules.config import compose  # noqa: E402


def main() -> None:
    out, root, devices = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    backbone_name = sys.argv[4] if len(sys.argv) > 4 else "sasrec"
    # 301 users: an odd count, so the two ranks get uneven shards (151 and 150 users).
    cfg = compose(
        [
            "data=synthetic",
            f"backbone={backbone_name}",
            f"data.root={root}",
            "data.synthetic_users=301",
            "data.eval_batch_size=32",
            *sys.argv[5:],
        ]
    )
    torch.manual_seed(0)
    dm, module = build_cf_pretrain(cfg)
    # The 1-process run saves its initial weights; the 2-process run evaluates exactly those.
    weights = Path(root) / f"weights-{backbone_name}.pt"
    if devices == 1 and not weights.exists():
        torch.save(module.backbone.state_dict(), weights)
    module.backbone.load_state_dict(torch.load(weights))
    trainer = L.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        callbacks=[RankingMetricsCallback()],
    )
    trainer.test(module, datamodule=dm, verbose=False)
    if trainer.is_global_zero:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        out.write_text(json.dumps(metrics, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
