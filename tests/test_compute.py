"""Compute dtypes chosen by the device, and the chunked softmax loss on each of its paths."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import lightning_modules.compute_dtypes as compute
from backbones.losses import SAFE_SHIFT_GAP, auto_chunk, chunked_softmax_loss
from lightning_modules.config import compose
from lightning_modules.run import run
from tests.conftest import tiny_args

AVX2 = {"cpu_name": "AMD EPYC", "capability": "AVX2", "avx512_bf16": False, "amx_bf16": False, "l2_cache_size": 524288}
AMX = {"cpu_name": "Intel Xeon", "capability": "AVX512", "avx512_bf16": True, "amx_bf16": True, "l2_cache_size": 2097152}
# every dtype setting, with a stage that reads it
SETTINGS = [("cf_pretrain", "stage.ce_compute_dtype"), ("face", "stage.ce_compute_dtype"), ("face", "stage.text_dtype"),
            ("face", "llm.dtype"), ("align_stage2", "llm.dtype")]


def _value(cfg, key: str) -> str:
    group, attr = key.split(".")
    return getattr(cfg.stage if group == "stage" else cfg.llm, attr)


@pytest.mark.parametrize("stage,key", SETTINGS)
def test_auto_is_float32_without_native_bf16_and_bfloat16_with_it(monkeypatch, stage: str, key: str) -> None:
    for features, expected in ((AVX2, "float32"), (AMX, "bfloat16")):
        monkeypatch.setattr(compute, "cpu_features", lambda f=features: f)
        cfg = compose([f"stage={stage}", "trainer=cpu", f"{key}=auto"])
        assert _value(cfg, key) == expected
        assert cfg.compute_dtypes[key].startswith(f"{expected} (auto: CPU {features['cpu_name']} (capability {features['capability']}")


@pytest.mark.parametrize("stage,key", SETTINGS)
def test_an_explicit_dtype_wins_and_emulated_bf16_warns(monkeypatch, caplog, stage: str, key: str) -> None:
    monkeypatch.setattr(compute, "cpu_features", lambda: AMX)
    assert _value(compose([f"stage={stage}", "trainer=cpu", f"{key}=float32"]), key) == "float32"
    monkeypatch.setattr(compute, "cpu_features", lambda: AVX2)
    with caplog.at_level(logging.WARNING, logger="llmrec"):
        cfg = compose([f"stage={stage}", "trainer=cpu", f"{key}=bfloat16"])
    assert _value(cfg, key) == "bfloat16" and "set explicitly" in cfg.compute_dtypes[key]
    assert f"{key}=bfloat16 on a device that emulates it" in caplog.text and "slower" in caplog.text


def test_the_defaults_are_auto_and_the_choice_is_recorded_in_the_run(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(compute, "cpu_features", lambda: AVX2)
    cfg = compose(["stage=face"])
    assert {k: v.split(" ")[0] for k, v in cfg.compute_dtypes.items()} == {
        "stage.ce_compute_dtype": "float32", "stage.text_dtype": "float32", "llm.dtype": "float32"}
    run(compose(tiny_args(tmp_path, "sasrec", "stage.max_epochs=1")))
    run_dir = tmp_path / "runs" / "synthetic" / "cf_pretrain" / "sasrec"
    assert "ce_compute_dtype: float32" in (run_dir / "config.yaml").read_text()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["compute_dtype/stage.ce_compute_dtype"].startswith("float32 (auto: CPU AMD EPYC (capability AVX2")
    # a rerun with the dtype spelt out is the same run: auto was resolved before the comparison
    assert run(compose(tiny_args(tmp_path, "sasrec", "stage.max_epochs=1", "stage.ce_compute_dtype=float32")))["epochs"] == 1


def _case(scale: float, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    # scale -1: both shift paths in one call, the first 16 rows small (the bound), the rest large (the max)
    rows = torch.where(torch.arange(37) < 16, 1.0, 16.0) if scale < 0 else torch.full((37,), scale)
    hidden = (rows.unsqueeze(1) * torch.randn(37, 8, generator=gen)).requires_grad_()
    table = (abs(scale) * torch.randn(50, 8, generator=gen)).requires_grad_()
    return hidden, table, torch.randint(0, 50, (37,), generator=gen)


# The test that the loss equals F.cross_entropy within 1e-6 in float32, on both shift paths: small
# logits take the bound shift folded into the matmul; large ones (the bound far above the
# target's logit) the per-chunk max; -1 mixes both, chunk by chunk
@pytest.mark.parametrize("scale", [1.0, 8.0, -1.0])
def test_chunked_softmax_loss_equals_cross_entropy_in_float32(scale: float) -> None:
    hidden, table, targets = _case(scale)
    logits = hidden @ table.T
    bound_is_safe = (hidden.norm(dim=1) * table.norm(dim=1).max() - logits[torch.arange(37), targets]) < SAFE_SHIFT_GAP
    assert {1.0: bound_is_safe.all(), 8.0: not bound_is_safe.any(), -1.0: bound_is_safe[:16].all() and not bound_is_safe[16:].any()}[scale]
    ref = F.cross_entropy(logits, targets)
    ref_grads = torch.autograd.grad(ref, (hidden, table))
    for chunk in (8, 37, 0):
        loss = chunked_softmax_loss(hidden, table, targets, chunk, torch.float32)
        grads = torch.autograd.grad(loss, (hidden, table))
        assert torch.allclose(loss, ref, rtol=1e-6, atol=1e-6), (chunk, float(loss - ref))
        for got, want in zip(grads, ref_grads):
            assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)
        with torch.no_grad():  # the value alone, without the gradients
            assert torch.allclose(chunked_softmax_loss(hidden, table, targets, chunk), ref, rtol=1e-6, atol=1e-6)


def test_chunked_softmax_loss_in_bfloat16_is_close_to_float32() -> None:
    hidden, table, targets = _case(1.0)
    ref = F.cross_entropy(hidden @ table.T, targets)
    ref_grads = torch.autograd.grad(ref, (hidden, table))
    loss = chunked_softmax_loss(hidden, table, targets, 8, torch.bfloat16)
    grads = torch.autograd.grad(loss, (hidden, table))
    assert loss.dtype == torch.float32 and abs(float(loss - ref)) < 1e-2 * float(ref)  # bf16 matmuls, fp32 softmax
    for got, want in zip(grads, ref_grads):
        assert (got - want).abs().max() < 2e-2 * want.abs().max()


def test_chunks_are_sized_to_the_cache() -> None:
    assert auto_chunk(12101) == 80  # Beauty: 4 MiB of float32 logits
    assert auto_chunk(10) == 256 and auto_chunk(10_000_000) == 16
