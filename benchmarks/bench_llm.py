"""Stage-2 (A-LLMRec) benchmark: training samples/s and tokens/s, evaluation users/s per mode, peak memory.

    python -m benchmarks.bench_llm data=beauty backbone=sasrec llm=smollm2 data.data_dir=../shared/data/amazon/Beauty/prepared
    make bench-llm DATASET=beauty DATA_DIR=../shared/data/amazon/Beauty/prepared [LLM=smollm2]

Needs the align_stage1 run of the dataset and backbone (``make bench-llm`` makes it first). Times
``--steps`` optimiser steps of real training batches (after one warm-up step) for each training
objective (``generate``, ``choice``, ``both``: ``<objective>_train_samples_per_second`` and
``_tokens_per_second``; the configured one is also ``train_*``), then each
evaluation mode alone (``score`` and ``generate``, for A-LLMRec and for the LLM-only prompt) over
``--users`` test users. Options: ``--steps N`` (default 8), ``--users N`` (default 32),
``--out FILE.json`` (default ``benchmarks/results/llm-<host>.json``).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from benchmarks.timing import peak_mib, sync, time_training


def bench(overrides: list[str], steps: int, users: int) -> dict:
    import lightning as L

    from lightning_modules.align_stage2 import build_align_stage2
    from lightning_modules.align_stage2_config import OBJECTIVES
    from lightning_modules.config import compose
    from lightning_modules.training import device_for

    cfg = compose(["stage=align_stage2", f"stage.max_eval_users={users}", *overrides])
    L.seed_everything(cfg.seed, verbose=False)
    device = device_for(cfg)
    datamodule, module = build_align_stage2(cfg, device)
    configured = cfg.stage.objective
    per_objective = {}
    for objective in OBJECTIVES:  # one module: the objective is read at each training step
        module.cfg.objective = objective
        per_objective[objective] = time_training(module, datamodule.train_dataloader(), steps, device, tokens=True)
    module.cfg.objective = configured
    timed = per_objective[configured]
    results = {
        "llm": cfg.llm.name,
        "dtype": cfg.llm.dtype,
        "compute_dtypes": cfg.compute_dtypes,
        "quantization": cfg.llm.quantization,
        "device": str(device),
        "llm_parameters": sum(p.numel() for p in module.llm.parameters()),
        "train_batch_size": cfg.stage.batch_size,
        "train_samples_per_second": timed["train_samples_per_second"],
        "train_tokens_per_second": timed["train_tokens_per_second"],
        "objective": cfg.stage.objective,
        **{f"{o}_train_samples_per_second": t["train_samples_per_second"] for o, t in per_objective.items()},
        **{f"{o}_train_tokens_per_second": t["train_tokens_per_second"] for o, t in per_objective.items()},
        "train_peak_mib": peak_mib(device),
    }
    module.eval()
    test = list(datamodule.test_dataloader())
    n_users = sum(len(b) for b in test)
    with torch.no_grad():
        for variant in ("main", "llm_only"):
            for mode in ("score", "generate"):
                start = time.perf_counter()
                for batch in test:
                    batch = batch.to(device)
                    order = batch.candidates  # timing only: the prompt order does not matter
                    user = module.backbone.encode_user(batch).float()
                    module._evaluate(batch, order, variant, user, score=mode == "score", generate=mode == "generate")
                sync(device)
                key = f"{'' if variant == 'main' else 'llm_only_'}{mode}_users_per_second"
                results[key] = round(n_users / (time.perf_counter() - start), 3)
    results["eval_users"] = n_users
    results["eval_batch_size"] = cfg.stage.eval_batch_size
    results["peak_mib"] = peak_mib(device)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--users", type=int, default=32)
    parser.add_argument("--out", default="")
    args, overrides = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    results = bench(overrides, args.steps, args.users)
    results["machine"] = platform.node()
    results["cpu_threads"] = torch.get_num_threads()
    out = Path(args.out or f"benchmarks/results/llm-{platform.node()}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    width = max(len(k) for k in results)
    for key, value in results.items():
        print(f"{key:<{width}}  {value}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
