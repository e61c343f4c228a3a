"""CF backbone benchmark: seconds per training epoch, evaluation seconds and peak memory.

    python -m benchmarks.bench_cf data=beauty data.data_dir=../shared/data/amazon/Beauty/prepared
    make bench-cf DATASET=beauty DATA_DIR=../shared/data/amazon/Beauty/prepared

Each backbone runs in its own process (so peak memory is its own): one full training epoch
(every training position once) through the Lightning Trainer with the backbone's default loss,
then a sampled-protocol validation pass and a test pass with both protocols. Extra ``key=value``
arguments are passed to every run (``backbone.loss=bce`` applies to all backbones).
Options: ``--backbones sasrec,ncf`` (default: all), ``--epochs N`` (default 1), ``--out FILE.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

from backbones import BACKBONES


def bench_backbone(name: str, overrides: list[str], epochs: int) -> dict:
    """Benchmark one backbone in this process and return its figures."""
    import lightning as L
    import torch

    from callbacks.ranking import RankingMetricsCallback
    from callbacks.timing import TimingCallback
    from lightning_modules.cf_pretrain import build_cf_pretrain
    from lightning_modules.config import compose

    cfg = compose([f"backbone={name}", *overrides])
    L.seed_everything(cfg.seed, verbose=False)
    dm, module = build_cf_pretrain(cfg)
    backbone = module.backbone
    timing = TimingCallback()
    trainer = L.Trainer(
        accelerator=cfg.trainer.accelerator,
        devices=1,
        precision=cfg.trainer.precision,
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        num_sanity_val_steps=0,
        callbacks=[RankingMetricsCallback(), timing],
    )
    loss = cfg.backbone.loss if backbone.trainable else "none"
    result = {"backbone": name, "loss": loss, "train_positions": dm.train_data.num_positions, "test_users": len(dm.data.eval_users)}
    if backbone.trainable:
        trainer.fit(module, datamodule=dm)
        result["seconds_per_epoch"] = timing.summary()["seconds_per_epoch"]
        result["val_seconds"] = timing.summary()["val_seconds_per_epoch"]
    else:
        result["seconds_per_epoch"] = 0.0
        start = time.perf_counter()
        trainer.validate(module, datamodule=dm, verbose=False)
        result["val_seconds"] = round(time.perf_counter() - start, 3)
    start = time.perf_counter()
    trainer.test(module, datamodule=dm, verbose=False)
    result["test_seconds"] = round(time.perf_counter() - start, 3)
    result["test/hit@1"] = round(float(trainer.callback_metrics["test/hit@1"]), 4)
    result["test/full/ndcg@10"] = round(float(trainer.callback_metrics["test/full/ndcg@10"]), 4)
    result["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    result["threads"] = torch.get_num_threads()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", default=",".join(BACKBONES))
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--out", default="")
    parser.add_argument("--one", default="", help=argparse.SUPPRESS)
    args, overrides = parser.parse_known_args(argv)
    if args.one:
        print("BENCH " + json.dumps(bench_backbone(args.one, overrides, args.epochs)), flush=True)
        return 0
    rows = []
    for name in args.backbones.split(","):
        cmd = [sys.executable, "-m", "benchmarks.bench_cf", "--one", name, "--epochs", str(args.epochs), *overrides]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "WANDB_MODE": "disabled"})
        lines = [line for line in proc.stdout.splitlines() if line.startswith("BENCH ")]
        if proc.returncode != 0 or not lines:
            print(f"{name}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
            return 1
        rows.append(json.loads(lines[-1][len("BENCH ") :]))
    header = f"{'backbone':<10} {'loss':<5} {'s/epoch':>8} {'val s':>7} {'test s':>7} {'peak MiB':>9} {'hit@1':>7} {'full ndcg@10':>13}"
    print(f"machine: {platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, torch threads {rows[0]['threads']}")
    print(header)
    for r in rows:
        print(
            f"{r['backbone']:<10} {r['loss']:<5} {r['seconds_per_epoch']:>8.2f} {r['val_seconds']:>7.2f} "
            f"{r['test_seconds']:>7.2f} {r['peak_rss_mib']:>9.0f} {r['test/hit@1']:>7.4f} {r['test/full/ndcg@10']:>13.4f}"
        )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
