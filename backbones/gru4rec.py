"""GRU4Rec: session-based recommendation with recurrent neural networks.

Hidasi et al., "Session-based Recommendations with Recurrent Neural Networks", ICLR 2016.
Used as a sequential backbone the way RecBole does (``sequential_recommender/gru4rec.py``):
item embedding -> embedding dropout -> GRU -> linear back to ``hidden_dim``, scored by dot
product with the item embedding table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from backbones.base import SequentialBackbone, SequentialConfig, pad_mask
from datamodules.constants import PAD_ID


@dataclass
class GRU4RecConfig(SequentialConfig):
    tiny: ClassVar[dict[str, Any]] = dict(hidden_dim=16, num_layers=2)

    name: str = "gru4rec"
    hidden_dim: int = 64  # (int) item embedding size = GRU hidden size
    num_layers: int = 1  # (int) stacked GRU layers
    dropout: float = 0.2  # (float) dropout on the item embeddings (RecBole's dropout_prob)
    max_len: int = 50  # (int) longest history read; longer inputs keep their last max_len items

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_layers < 1:
            raise ValueError(f"backbone.num_layers must be >= 1, got {self.num_layers}")


class GRU4Rec(SequentialBackbone):
    """GRU over left-padded item sequences.

    ``sequence_output(item_seq [B, L]) -> [B, L, D]`` is zero at padding positions.
    """

    config_class = GRU4RecConfig

    def __init__(self, cfg: GRU4RecConfig, num_items: int, num_users: int | None = None) -> None:
        super().__init__(cfg, num_items)
        # bias=False as in RecBole; packing below already keeps padding out of the recurrence.
        self.gru = nn.GRU(cfg.hidden_dim, cfg.hidden_dim, num_layers=cfg.num_layers, bias=False, batch_first=True)
        self.dense = nn.Linear(cfg.hidden_dim, cfg.hidden_dim)
        self._init_weights()

    def _init_weights(self) -> None:
        # RecBole: xavier-normal embeddings, xavier-uniform recurrent weights; the padding row stays zero.
        nn.init.xavier_normal_(self.item_emb.weight)
        with torch.no_grad():
            self.item_emb.weight[PAD_ID].zero_()
        for name, param in self.gru.named_parameters():
            if name.startswith("weight"):
                nn.init.xavier_uniform_(param)

    def sequence_output(self, item_seq: Tensor) -> Tensor:
        item_seq = self.clip(item_seq)
        valid = pad_mask(item_seq)
        length = item_seq.shape[1]
        lengths = valid.sum(dim=1)
        # A GRU run over left padding drifts (its state changes even on zero inputs), so the real
        # items are rolled to the front (right padding) and packed: the recurrence then starts at
        # each user's first real item whatever the batch's padded length. Rows with no item get
        # length 1 (packing rejects 0); their output is masked to zero below.
        cols = torch.arange(length, device=item_seq.device)
        to_right = (cols[None, :] + (length - lengths)[:, None]) % length
        x = self.emb_drop(self.item_emb(torch.gather(item_seq, 1, to_right)))
        packed = pack_padded_sequence(x, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.gru(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=length)
        # Inverse roll: left-padded column s holds right-padded column (s + len) % L.
        to_left = (cols[None, :] + lengths[:, None]) % length
        out = torch.gather(out, 1, to_left[:, :, None].expand(-1, -1, out.shape[-1]))
        return self.dense(out) * valid.unsqueeze(-1)
