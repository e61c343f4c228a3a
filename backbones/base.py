"""The protocol every CF backbone satisfies, and helpers shared by several backbones."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from datamodules.batch import SeqBatch
from datamodules.constants import PAD_ID

LOSSES = ("ce", "bce", "bpr")


@dataclass
class BackboneConfig:
    """Fields every backbone config has. The loss is read by the training module, not the backbone.

    ``loss``: ``ce`` = full softmax cross-entropy over all items (default), ``bce`` = binary
    cross-entropy with ``num_negatives`` uniform negatives per target (the SASRec/NCF papers),
    ``bpr`` = Bayesian personalised ranking with the same negatives (LightGCN paper).

    ``tiny`` (class attribute): overrides that make the model seconds-fast, for tests and smoke runs.
    """

    tiny: ClassVar[dict[str, Any]] = {}

    name: str = "?"
    hidden_dim: int = 64
    loss: str = "ce"
    num_negatives: int = 1

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"backbone.loss must be one of {list(LOSSES)}, got {self.loss!r}")
        if self.hidden_dim < 1:
            raise ValueError(f"backbone.hidden_dim must be >= 1, got {self.hidden_dim}")
        if self.num_negatives < 1:
            raise ValueError(f"backbone.num_negatives must be >= 1, got {self.num_negatives}")


@dataclass
class SequentialConfig(BackboneConfig):
    """Fields shared by the sequential backbones (SASRec, GRU4Rec, NextItNet)."""

    dropout: float = 0.2
    max_len: int = 50

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"backbone.dropout must be in [0, 1), got {self.dropout}")
        if self.max_len < 1:
            raise ValueError(f"backbone.max_len must be >= 1, got {self.max_len}")


@runtime_checkable
class RecBackbone(Protocol):
    """What the stages need from a CF model.

    - ``encode_user(batch) -> [B, D]``
    - ``item_embeddings(item_ids=None) -> [N, D]`` (the whole table, padding row included, when None)
    - ``score(batch, item_ids [B, C]) -> [B, C]``
    """

    num_items: int
    hidden_dim: int

    def encode_user(self, batch: SeqBatch) -> Tensor: ...

    def item_embeddings(self, item_ids: Tensor | None = None) -> Tensor: ...

    def score(self, batch: SeqBatch, item_ids: Tensor) -> Tensor: ...


class Backbone(nn.Module):
    """Base class with the default dot-product scoring.

    Class attributes tell the training module what a backbone consumes:

    - ``input_kind``: ``"sequence"`` (reads ``item_seq``) or ``"user"`` (reads ``user_ids``).
    - ``needs_interactions``: the constructor takes the training ``(user, item)`` pairs ``[E, 2]``.
    - ``trainable``: False for models with nothing to fit (the popularity baseline).
    - ``dot_product_scores``: scores are ``encode_user @ item_embeddings().T`` (False for NCF's MLP),
      which lets the training loss use the chunked full-softmax.
    - ``config_class``: its config dataclass (the ``backbone`` group's schema).
    """

    config_class: type[BackboneConfig] = BackboneConfig
    input_kind: str = "sequence"
    needs_interactions: bool = False
    trainable: bool = True
    dot_product_scores: bool = True

    num_items: int
    hidden_dim: int

    def encode_user(self, batch: SeqBatch) -> Tensor:
        raise NotImplementedError

    def item_embeddings(self, item_ids: Tensor | None = None) -> Tensor:
        raise NotImplementedError

    def score(self, batch: SeqBatch, item_ids: Tensor) -> Tensor:
        """Dot product of the user vector ``[B, D]`` with candidate items ``[B, C]`` -> ``[B, C]``."""
        user = self.encode_user(batch)
        return torch.einsum("bd,bcd->bc", user, self.item_embeddings(item_ids))

    def user_and_item_tables(self, batch: SeqBatch) -> tuple[Tensor, Tensor]:
        """``(encode_user(batch) [B, D], item_embeddings() [N, D])`` in one pass (LightGCN propagates once)."""
        return self.encode_user(batch), self.item_embeddings()

    def score_all(self, batch: SeqBatch) -> Tensor:
        """Scores of every item ``[B, N]`` (column ``PAD_ID`` included); used by full ranking."""
        return self.encode_user(batch) @ self.item_embeddings().T

    def sequence_output(self, item_seq: Tensor) -> Tensor:
        """Per-position hidden states ``[B, L, D]``; sequential backbones implement it."""
        raise NotImplementedError(f"{type(self).__name__} is not a sequential model")

    def train_scores(self, batch: SeqBatch, item_ids: Tensor) -> Tensor:
        """Scores used by the training loss for ``item_ids`` ``[B, K]`` of a user batch."""
        return self.score(batch, item_ids)


class SequentialBackbone(Backbone):
    """Base of models that read the item sequence: the user is the state at the most recent item.

    Holds the item table ``item_emb`` (input and output embedding) and the embedding dropout;
    subclasses implement ``sequence_output(item_seq [B, L]) -> [B, L, D]`` (position t sees items
    <= t only) and call ``clip`` to validate and truncate their input.

    - ``encode_user(batch) -> [B, D]``: the state at the most recent item (last column)
    - ``item_embeddings(ids) -> [..., D]``
    """

    input_kind = "sequence"

    def __init__(self, cfg: SequentialConfig, num_items: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_items = num_items
        self.hidden_dim = cfg.hidden_dim
        self.item_emb = nn.Embedding(num_items + 1, cfg.hidden_dim, padding_idx=PAD_ID)
        self.emb_drop = nn.Dropout(cfg.dropout)

    def clip(self, item_seq: Tensor) -> Tensor:
        """Check ``item_seq [B, L]`` and keep its last ``max_len`` columns."""
        check_item_seq(item_seq)
        return item_seq[:, -self.cfg.max_len :] if item_seq.shape[1] > self.cfg.max_len else item_seq

    def encode_user(self, batch: SeqBatch) -> Tensor:
        if batch.item_seq is None:
            raise ValueError(f"{type(self).__name__} needs batch.item_seq [B, L]")
        return self.sequence_output(batch.item_seq)[:, -1]

    def item_embeddings(self, item_ids: Tensor | None = None) -> Tensor:
        return self.item_emb.weight if item_ids is None else self.item_emb(item_ids)


def check_item_seq(item_seq: Tensor) -> None:
    """Raise a clear error unless ``item_seq`` is a 2-D integer tensor ``[B, L]``."""
    if item_seq.dim() != 2 or item_seq.dtype not in (torch.int64, torch.int32):
        raise ValueError(
            f"item_seq must be a 2-D LongTensor [B, L], got shape {tuple(item_seq.shape)} "
            f"dtype {item_seq.dtype}"
        )


def right_aligned_positions(item_seq: Tensor, max_len: int) -> Tensor:
    """Position ids ``[L]`` so that the last column always has position ``max_len - 1``.

    Sequences are left-padded, so the most recent item is the last column. Giving it the same
    position id whatever the batch's padded length makes the output independent of how much
    padding a batch carries (a batch padded to 12 scores exactly like one padded to 50).
    """
    length = item_seq.shape[1]
    if length > max_len:
        raise ValueError(f"item_seq has {length} columns but the model's max_len is {max_len}")
    return torch.arange(max_len - length, max_len, device=item_seq.device)


def pad_mask(item_seq: Tensor) -> Tensor:
    """``[B, L]`` True where there is a real item."""
    return item_seq != PAD_ID
