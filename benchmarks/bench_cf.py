"""CF backbone benchmark: seconds per training epoch, evaluation seconds and peak memory.

    python -m benchmarks.bench_cf data=beauty data.data_dir=../shared/data/amazon/Beauty/prepared
    make bench-cf DATASET=beauty DATA_DIR=../shared/data/amazon/Beauty/prepared

Each backbone runs in its own process (so peak memory is its own): one full training epoch
(every training position once) through the Lightning Trainer with the backbone's default loss,
then a sampled-protocol validation pass and a test pass with both protocols. Extra ``key=value``
arguments are passed to every run (``backbone.loss=bce`` applies to all backbones).

Each backbone runs once per compute dtype of the loss (``stage.ce_compute_dtype``): float32, and
bfloat16 too where the device runs it natively (``--dtypes float32,bfloat16`` forces a list). The
output names the CPU (``lscpu`` model name), torch's capability string and whether bf16 is native;
``benchmarks/results/cf-<machine>.json`` (or ``--out``) holds it with every row.
Options: ``--backbones sasrec,ncf`` (default: all), ``--epochs N`` (default 1), ``--dtypes``, ``--machine NAME``.
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
from benchmarks.timing import bench_dtypes, machine_info


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
    parser.add_argument("--dtypes", default="")
    parser.add_argument("--machine", default=platform.node())
    parser.add_argument("--one", default="", help=argparse.SUPPRESS)
    args, overrides = parser.parse_known_args(argv)
    if args.one:
        print("BENCH " + json.dumps(bench_backbone(args.one, overrides, args.epochs)), flush=True)
        return 0
    info = machine_info(args.machine)
    rows = []
    for dtype in bench_dtypes(args.dtypes, info["native_bf16"]):
        for name in args.backbones.split(","):
            cmd = [sys.executable, "-m", "benchmarks.bench_cf", "--one", name, "--epochs", str(args.epochs),
                   f"stage.ce_compute_dtype={dtype}", *overrides]
            proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "WANDB_MODE": "disabled"})
            lines = [line for line in proc.stdout.splitlines() if line.startswith("BENCH ")]
            if proc.returncode != 0 or not lines:
                print(f"{name}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
                return 1
            rows.append({**json.loads(lines[-1][len("BENCH ") :]), "dtype": dtype})
    print(f"machine: {info['machine']}, {info['cpu_model']}, {info['cpus']} cpus, torch threads {info['threads']}, "
          f"capability {info['cpu_capability']}, bf16 native: {info['native_bf16']} ({info['bf16_evidence']})")
    print(f"{'backbone':<10} {'loss':<5} {'dtype':<9} {'s/epoch':>8} {'val s':>7} {'test s':>7} {'peak MiB':>9} {'hit@1':>7} {'full ndcg@10':>13}")
    for r in rows:
        print(
            f"{r['backbone']:<10} {r['loss']:<5} {r['dtype']:<9} {r['seconds_per_epoch']:>8.2f} {r['val_seconds']:>7.2f} "
            f"{r['test_seconds']:>7.2f} {r['peak_rss_mib']:>9.0f} {r['test/hit@1']:>7.4f} {r['test/full/ndcg@10']:>13.4f}"
        )
    out = Path(args.out or f"benchmarks/results/cf-{args.machine}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**info, "overrides": overrides, "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
