"""One benchmark over every stage: ``make bench`` writes ``benchmarks/results/<machine>.json``.

    python -m benchmarks.bench data=beauty backbone=sasrec llm=smollm2 data.data_dir=../shared/data/amazon/Beauty/prepared
    make bench DATASET=beauty DATA_DIR=../shared/data/amazon/Beauty/prepared [LLM=smollm2]

Per stage, each in its own process (so its peak memory is its own):

- ``cf_pretrain``: one full training epoch of the backbone through the Lightning Trainer, then a test
  pass with both protocols (see ``bench_cf``): training samples (sequence positions or pairs) per
  second, evaluation users per second.
- ``align_stage1`` and ``face``: ``--steps`` optimiser steps of real training batches after one
  warm-up step (FACE in its align phase, the costly one), then ``--users`` test users.
- ``align_stage2``: ``bench_llm`` (training tokens per second, evaluation users per second per
  mode); on a GPU also the achieved TFLOP/s of training against the device's bf16 dense peak.

Peak memory is the process's resident set on a CPU, ``torch.cuda.max_memory_allocated`` on a GPU.
``align_stage1``, ``align_stage2`` and ``face`` read the earlier stages' runs of the dataset and
backbone (``make bench`` makes them first). Options: ``--stages a,b`` (default all), ``--steps N``
(8), ``--users N`` (64), ``--machine NAME`` (the host name), ``--out FILE.json``, ``--dtypes``
(default float32, and bfloat16 too where the device runs it natively: each stage runs once per
dtype, with every compute dtype it uses set to it). Overrides apply to every stage;
``<stage>:key=value`` to that stage only (``face:stage.num_words=8``). The JSON names the CPU model,
torch's capability string and bf16 support, and each stage's compute dtypes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.timing import bench_dtypes, machine_info

STAGES = ("cf_pretrain", "align_stage1", "align_stage2", "face")
# bf16 dense tensor-core peaks (TFLOP/s) from the vendors' data sheets, matched against the device name.
PEAK_BF16_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.1, "A10": 125.0, "L4": 121.0}


def for_stage(stage: str, overrides: list[str]) -> list[str]:
    """The overrides for ``stage``: the plain ones and its own ``<stage>:key=value`` ones (prefix removed)."""
    out = []
    for item in overrides:
        key = item.split("=", 1)[0]
        if ":" not in key:
            out.append(item)
        elif key.split(":", 1)[0] == stage:
            out.append(item.split(":", 1)[1])
    return out


def _stage(stage: str, overrides: list[str], steps: int, users: int) -> dict:
    import lightning as L
    import torch

    from benchmarks.timing import peak_mib, time_evaluation, time_training
    from lightning_modules.align_stage1 import build_align_stage1
    from lightning_modules.config import compose
    from lightning_modules.face import build_face
    from lightning_modules.training import device_for

    if stage == "cf_pretrain":
        from benchmarks.bench_cf import bench_backbone

        cfg = compose(overrides)
        out = bench_backbone(cfg.backbone.name, overrides, epochs=1)
        out["train_samples_per_second"] = round(out["train_positions"] / out["seconds_per_epoch"], 3) if out["seconds_per_epoch"] else None
        out["eval_users_per_second"] = round(out["test_users"] / out["test_seconds"], 3)
        out["compute_dtypes"] = cfg.compute_dtypes
        return out
    if stage == "align_stage2":
        from benchmarks.bench_llm import bench

        out = bench(overrides, steps, users)
        if out["device"].startswith("cuda"):
            out.update(_stage2_tflops(out))
        return out
    extra = [f"stage.max_eval_users={users}"] if stage == "align_stage1" else ["stage.map_epochs=0"]
    cfg = compose([f"stage={stage}", *extra, *overrides])
    L.seed_everything(cfg.seed, verbose=False)
    device = device_for(cfg)
    if stage == "align_stage1":
        datamodule, module = build_align_stage1(cfg)
    else:
        datamodule, module, _ = build_face(cfg, device)
    out = {"device": str(device), "train_batch_size": datamodule.batch_size}
    out.update(time_training(module, datamodule.train_dataloader(), steps, device))
    if stage == "face":  # each step maps the batch's first users, their positives and as many random items
        entities = 3 * min(cfg.stage.entities_per_step, datamodule.batch_size)
        out["face_entities_per_second"] = round(out["train_samples_per_second"] * entities / datamodule.batch_size, 3)
    test = [b for _, b in zip(range(max(1, users // datamodule.eval_batch_size)), datamodule.test_dataloader())]
    out.update(time_evaluation(module, test, device))
    out["peak_mib"] = peak_mib(device)
    out["threads"] = torch.get_num_threads()
    out["compute_dtypes"] = cfg.compute_dtypes
    return out


def _stage2_tflops(out: dict) -> dict:
    """Achieved training TFLOP/s of stage 2: the frozen LLM's forward (2 N per token) and its backward
    to the input embeddings (another 2 N; no weight gradients), against the device's bf16 peak."""
    import torch

    achieved = 4 * out["llm_parameters"] * out["train_tokens_per_second"] / 1e12
    name = torch.cuda.get_device_name()
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    return {"gpu": name, "train_tflops": round(achieved, 2), "peak_bf16_tflops": peak, "train_mfu": round(achieved / peak, 4) if peak else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", default=",".join(STAGES))
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--users", type=int, default=64)
    parser.add_argument("--machine", default=platform.node())
    parser.add_argument("--out", default="")
    parser.add_argument("--dtypes", default="")
    parser.add_argument("--one", default="", help=argparse.SUPPRESS)
    args, overrides = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    if args.one:
        print("BENCH " + json.dumps(_stage(args.one, for_stage(args.one, overrides), args.steps, args.users)), flush=True)
        return 0
    stages = [s for s in args.stages.split(",") if s]
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        print(f"unknown stage(s) {unknown}; choose from {', '.join(STAGES)}", file=sys.stderr)
        return 2
    from lightning_modules.config import compose

    info = machine_info(args.machine)
    print(f"machine: {info['cpu_model']}, capability {info['cpu_capability']}, bf16 native: {info['native_bf16']}", flush=True)
    results = {**info, "overrides": overrides, "stages": {}}
    for stage in stages:
        # every compute dtype the stage uses, set to each benchmarked dtype
        keys = compose([f"stage={stage}", *for_stage(stage, overrides)]).compute_dtypes
        results["stages"][stage] = {}
        # a stage without a dtype setting (stage 1 computes in float32) runs once
        for dtype in bench_dtypes(args.dtypes, info["native_bf16"]) if keys else ["float32"]:
            forced = [f"{key}={dtype}" for key in keys]
            cmd = [sys.executable, "-m", "benchmarks.bench", "--one", stage, "--steps", str(args.steps), "--users",
                   str(args.users), *overrides, *forced]
            start = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "WANDB_MODE": "disabled"})
            lines = [line for line in proc.stdout.splitlines() if line.startswith("BENCH ")]
            if proc.returncode != 0 or not lines:
                print(f"{stage} ({dtype}): failed\n{proc.stderr[-3000:]}", file=sys.stderr)
                return 1
            figures = json.loads(lines[-1][len("BENCH ") :])
            figures["wall_seconds"] = round(time.perf_counter() - start, 1)
            results["stages"][stage][dtype] = figures
            print(f"{stage} ({dtype}): {json.dumps(figures)}", flush=True)
    out = Path(args.out or f"benchmarks/results/{args.machine}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    tmp.replace(out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
