"""Timing helpers shared by the benchmarks: peak memory, device sync, training and evaluation throughput."""

from __future__ import annotations

import time


def peak_mib(device) -> float:
    import resource

    import torch

    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def optimiser_and_schedule(module) -> tuple:
    """The optimiser of ``module.configure_optimizers()`` and its per-step learning-rate schedule (None
    without one), whether it returns an optimiser or Lightning's dict with ``lr_scheduler``."""
    configured = module.configure_optimizers()
    if not isinstance(configured, dict):
        return configured, None
    schedule = configured.get("lr_scheduler")
    return configured["optimizer"], schedule["scheduler"] if isinstance(schedule, dict) else schedule


def time_training(module, loader, steps: int, device, tokens: bool = False) -> dict:
    """Samples per second over ``steps`` optimiser steps after one warm-up step; with ``tokens``,
    also tokens per second from the module's ``last_tokens`` (stage 2)."""
    optimizer, schedule = optimiser_and_schedule(module)
    module.to(device).train()
    module.log = lambda *args, **kwargs: None  # no trainer attached
    batches = iter(loader)
    samples = n_tokens = 0
    seconds = 0.0
    for step in range(steps + 1):
        try:
            batch = next(batches).to(device)
        except StopIteration:
            batches = iter(loader)
            batch = next(batches).to(device)
        start = time.perf_counter()
        loss = module.training_step(batch, step)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if schedule is not None:
            schedule.step()
        sync(device)
        if step:
            seconds += time.perf_counter() - start
            samples += len(batch)
            n_tokens += module.last_tokens if tokens else 0
    out = {"train_steps": steps, "train_samples_per_second": round(samples / seconds, 3)}
    if tokens:
        out["train_tokens_per_second"] = round(n_tokens / seconds, 1)
    return out


def time_evaluation(module, loader, device) -> dict:
    """Evaluation users per second of the module's ``test_step`` over ``loader``."""
    import torch

    module.to(device).eval()
    users = 0
    start = time.perf_counter()
    with torch.no_grad():
        for step, batch in enumerate(loader):
            module.test_step(batch.to(device), step)
            users += len(batch)
    sync(device)
    return {"eval_users": users, "eval_users_per_second": round(users / (time.perf_counter() - start), 3)}


def cpu_model() -> str:
    """The CPU's model name as ``lscpu`` prints it (``/proc/cpuinfo``), or torch's name for it."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    from lightning_modules.compute_dtypes import cpu_features

    return cpu_features()["cpu_name"]


def machine_info(name: str) -> dict:
    """What a benchmark ran on: CPU model, torch's capability string, bf16 support, GPU, torch version."""
    import os
    import platform

    import torch

    from lightning_modules.compute_dtypes import cpu_features, native_bf16

    features = cpu_features()
    gpu = torch.cuda.is_available()
    native, evidence = native_bf16(torch.device("cuda" if gpu else "cpu"))
    return {
        "machine": name,
        "cpu_model": cpu_model(),
        "cpus": os.cpu_count(),
        "cpu_capability": features["capability"],
        "avx512_bf16": features["avx512_bf16"],
        "amx_bf16": features["amx_bf16"],
        "native_bf16": native,
        "bf16_evidence": evidence,
        "gpu": torch.cuda.get_device_name() if gpu else None,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }


def bench_dtypes(requested: str, native: bool) -> list[str]:
    """The compute dtypes to benchmark: ``requested`` (comma-separated), or float32 and, where the device
    runs it natively, bfloat16 too."""
    if requested:
        return [d for d in requested.split(",") if d]
    return ["float32", "bfloat16"] if native else ["float32"]
