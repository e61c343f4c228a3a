"""What the validation pilots share (``benchmarks.stage2_pilot``, ``benchmarks.face_pilot``): a module's
own ``training_step`` stepped by hand for a number of steps over the stage's training loader, with a
mean training loss every 10 steps and an evaluation every ``every`` steps, each printed as one JSON line."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from typing import Any, TextIO

import torch


def prepare(cfg: Any) -> None:
    """The run's CPU threads and seed, before the stage's modules are built (their initial weights)."""
    if cfg.trainer.num_threads:
        torch.set_num_threads(cfg.trainer.num_threads)
    torch.manual_seed(cfg.seed)


class Records(list):
    """The pilot's records; :meth:`emit` keeps one and prints it as a JSON line to ``out``."""

    def __init__(self, out: TextIO) -> None:
        super().__init__()
        self.out = out

    def emit(self, record: dict) -> None:
        self.append(record)
        print(json.dumps(record), file=self.out, flush=True)


def train_steps(module: Any, loader: Any, optimiser: torch.optim.Optimizer, steps: int, every: int,
                evaluate: Callable[[], dict], records: Records, schedule: Any = None, clip: float = 0.0,
                clip_params: Iterable[torch.nn.Parameter] = (), on_step: Callable[[int], None] | None = None) -> None:
    """Step ``module.training_step`` ``steps`` times over ``loader`` (a new pass takes the next epoch's
    seeded order), clipping ``clip_params`` at ``clip`` and stepping ``schedule`` when given; ``on_step(step)``
    runs before each step; the module's ``log`` becomes a no-op. Emits ``{step, train_loss, seconds_per_step}`` every 10 steps and
    ``{step, **evaluate()}`` every ``every`` steps and at the end."""
    clip_params = list(clip_params)
    module.log = lambda *args, **kwargs: None  # no trainer attached
    module.train()
    losses, step, epoch, start = [], 0, 0, time.time()
    batches = iter(loader)
    while step < steps:
        batch = next(batches, None)
        if batch is None:  # a new pass: the next epoch's seeded order of the training users
            epoch += 1
            if hasattr(loader.sampler, "set_epoch"):
                loader.sampler.set_epoch(epoch)
            batches = iter(loader)
            continue
        if on_step is not None:
            on_step(step)
        loss = module.training_step(batch, step)
        optimiser.zero_grad()
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(clip_params, clip)
        optimiser.step()
        if schedule is not None:
            schedule.step()
        step += 1
        losses.append(float(loss.detach()))
        if step % 10 == 0:
            records.emit({"step": step, "train_loss": round(sum(losses[-10:]) / 10, 4), "seconds_per_step": round((time.time() - start) / step, 2)})
        if step % every == 0 or step == steps:
            records.emit({"step": step, **evaluate()})
