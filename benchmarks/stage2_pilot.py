"""Stage-2 pilots on validation users: train the projectors for a few hundred steps and score the
validation users' validation items (their own frozen 1 + 19 candidates) every so often, as A-LLMRec
and as the shuffled control. Nothing is written and no test user is read; this is how the quick
profile's settings were chosen (README, "Choosing stage 2 on validation users").

    python -m benchmarks.stage2_pilot --steps 300 --every 100 data=beauty \
        data.data_dir=../shared/data/amazon/Beauty/prepared profile=quick stage.lr=0.001

The arguments after the options are the usual ``key=value`` overrides (``stage=align_stage2`` is
implied; the align_stage1 run must exist). Prints one JSON line per 10 steps (mean training loss)
and per evaluation (validation Hit@1 of ``main`` and ``shuffled``; ``--llm-only`` adds the LLM
without vectors, which training does not change). ``stage.max_val_users`` sets the validation users.
"""

from __future__ import annotations

import argparse
import sys

import torch

from benchmarks.pilot import Records, prepare, train_steps
from benchmarks.timing import optimiser_and_schedule
from callbacks.ranking import sampled_ranks
from lightning_modules.align_stage2 import LLMProjectionModule, build_align_stage2
from lightning_modules.config import compose


def validation_hits(module: LLMProjectionModule, batches: list, variants: tuple[str, ...]) -> dict[str, float]:
    """Hit@1 of each variant over the validation batches (target in column 0 of their candidates)."""
    module.eval()
    out = {}
    for variant in variants:
        hits = [sampled_ranks(module.answer(batch, variant)[0]) == 0 for batch in batches]
        out[variant] = round(float(torch.cat(hits).float().mean()), 4)
    module.train()
    return out


def pilot(overrides: list[str], steps: int, every: int, llm_only: bool = False, out=sys.stdout) -> list[dict]:
    """Train ``steps`` steps of the stage's own optimiser, warm-up and clipping; evaluate every ``every``."""
    cfg = compose(["stage=align_stage2", *overrides])
    prepare(cfg)
    datamodule, module = build_align_stage2(cfg)
    optimiser, schedule = optimiser_and_schedule(module)
    val = list(datamodule.val_dataloader())
    records = Records(out)
    records.emit({"overrides": overrides, "validation_users": sum(len(b) for b in val)})
    if llm_only:
        records.emit({"step": 0, **validation_hits(module, val, ("llm_only",))})
    train_steps(module, datamodule.train_dataloader(), optimiser, steps, every,
                lambda: validation_hits(module, val, ("main", "shuffled")), records, schedule=schedule,
                clip=cfg.trainer.gradient_clip_val, clip_params=module.projector.parameters())
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--llm-only", action="store_true", help="also score the LLM without vectors once, before training")
    args, overrides = parser.parse_known_args(argv)
    pilot(overrides, args.steps, args.every, args.llm_only)
    return 0


if __name__ == "__main__":
    sys.exit(main())
