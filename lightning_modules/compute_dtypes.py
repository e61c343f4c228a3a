"""Compute dtypes chosen by the device: ``auto`` is bfloat16 where the device runs it natively and
float32 elsewhere.

bfloat16 is native on CUDA GPUs that support it and on CPUs with AVX512-BF16 or AMX. Elsewhere torch
emulates it, and it is far slower than float32. Measured on a 2-core AMD EPYC with AVX2 only:
one SASRec epoch on Beauty took 278 s with bf16 and 30 s with fp32. One logits chunk of the loss,
``[256x64] @ [64x11010]``, took 111 ms against 24 ms on 1 thread.

:func:`resolve_compute_dtypes` replaces every ``auto`` in a composed config by the choice. The
choices and their reasons go to ``RunConfig.compute_dtypes``, and from there to ``config.yaml``
and ``metrics.json``. An explicit value wins. An explicit bfloat16 on a device without native
support logs a warning.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

log = logging.getLogger("llmrec")

DTYPE_KEYS = ("stage.ce_compute_dtype", "stage.text_dtype", "llm.dtype")
"""Every compute-dtype setting that may be ``auto``; ``llm.dtype`` counts for the stages that load the LLM."""
EMULATED_BF16_SLOWDOWN = "about 5-10x slower than float32 (measured: 278 s vs 30 s per SASRec epoch on Beauty, AVX2 CPU)"


def cpu_features() -> dict[str, Any]:
    """torch's view of this CPU: its name, capability string (``AVX2``, ``AVX512`` ...), and bf16 support."""
    caps = torch._C._cpu._get_cpu_capability()
    return {
        "cpu_name": caps.get("cpu_name", ""),
        "capability": torch.backends.cpu.get_cpu_capability(),
        "avx512_bf16": bool(caps.get("avx512_bf16", False)),
        "amx_bf16": bool(caps.get("amx_bf16", False)),
        "l2_cache_size": caps.get("l2_cache_size"),
    }


def device_of(trainer_accelerator: str) -> torch.device:
    """The device a run computes on: CUDA for ``gpu``/``cuda``, or for ``auto`` when a GPU is visible."""
    gpu = trainer_accelerator in ("gpu", "cuda") or (trainer_accelerator == "auto" and torch.cuda.is_available())
    return torch.device("cuda" if gpu else "cpu")


def native_bf16(device: torch.device) -> tuple[bool, str]:
    """Whether ``device`` runs bfloat16 natively, and the evidence, in words."""
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return False, "no CUDA device is visible to this process"
        name = torch.cuda.get_device_name(device)
        ok = torch.cuda.is_bf16_supported()
        return ok, f"{name} {'supports' if ok else 'does not support'} bf16"
    f = cpu_features()
    ok = f["avx512_bf16"] or f["amx_bf16"]
    return ok, (
        f"CPU {f['cpu_name'] or '?'} (capability {f['capability']}, avx512_bf16 {f['avx512_bf16']}, "
        f"amx_bf16 {f['amx_bf16']}) {'runs' if ok else 'emulates'} bf16"
    )


def resolve_compute_dtypes(cfg: Any) -> dict[str, str]:
    """Replace each ``auto`` compute dtype of ``cfg`` (a composed RunConfig) by the device's choice, in
    place; return ``{key: "<dtype> (<why>)"}`` for the settings the stage uses."""
    device = device_of(cfg.trainer.accelerator)
    native, evidence = native_bf16(device)
    uses_llm = "llm" in type(cfg.stage).groups
    out: dict[str, str] = {}
    for key in DTYPE_KEYS:
        group, attr = key.split(".")
        node = cfg.stage if group == "stage" else cfg.llm
        if not hasattr(node, attr) or (group == "llm" and not uses_llm):
            continue
        value = getattr(node, attr)
        if value == "auto":
            value = "bfloat16" if native else "float32"
            setattr(node, attr, value)
            out[key] = f"{value} (auto: {evidence})"
        else:
            out[key] = f"{value} (set explicitly; {evidence})"
            if value == "bfloat16" and not native:
                log.warning("%s=bfloat16 on a device that emulates it: %s. Use auto or float32", key, EMULATED_BF16_SLOWDOWN)
    for key, why in out.items():
        log.info("compute dtype %s = %s", key, why)
    return out
