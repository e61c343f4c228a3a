"""SASRec: self-attentive sequential recommendation.

Kang & McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018.
Pre-LayerNorm Transformer blocks with causal attention over the left-padded item sequence,
learned absolute positions aligned to the most recent item, a final LayerNorm, and scores
as dot products with the (shared) item embedding table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from backbones.base import SequentialBackbone, SequentialConfig, pad_mask, right_aligned_positions


@dataclass
class SASRecConfig(SequentialConfig):
    tiny: ClassVar[dict[str, Any]] = dict(hidden_dim=16, num_layers=1, num_heads=2)

    name: str = "sasrec"
    hidden_dim: int = 64
    num_layers: int = 2
    num_heads: int = 1
    dropout: float = 0.2
    max_len: int = 50

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.hidden_dim % self.num_heads:
            raise ValueError(
                f"backbone.hidden_dim ({self.hidden_dim}) must be divisible by backbone.num_heads ({self.num_heads})"
            )


class _Block(nn.Module):
    """Pre-LN Transformer block: x + Attn(LN(x)), then x + FFN(LN(x))."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.ln_attn = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ln_ffn = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, attn_mask: Tensor) -> Tensor:
        b, length, dim = x.shape
        q, k, v = self.qkv(self.ln_attn(x)).view(b, length, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
        )
        x = x + self.drop(self.proj(attn.transpose(1, 2).reshape(b, length, dim)))
        return x + self.drop(self.ffn(self.ln_ffn(x)))


class SASRec(SequentialBackbone):
    """SASRec over left-padded sequences.

    ``sequence_output(item_seq [B, L]) -> [B, L, D]``; the user is the state at the last column.
    """

    config_class = SASRecConfig

    def __init__(self, cfg: SASRecConfig, num_items: int, num_users: int | None = None) -> None:
        super().__init__(cfg, num_items)
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.hidden_dim)
        self.blocks = nn.ModuleList(_Block(cfg.hidden_dim, cfg.num_heads, cfg.dropout) for _ in range(cfg.num_layers))
        self.ln_out = nn.LayerNorm(cfg.hidden_dim)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # Truncated-normal(0.02) as in BERT4Rec/RecBole; the padding row stays zero.
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.trunc_normal_(module.weight, std=0.02, a=-0.04, b=0.04)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
            if isinstance(module, nn.Embedding) and module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()

    def sequence_output(self, item_seq: Tensor) -> Tensor:
        item_seq = self.clip(item_seq)
        valid = pad_mask(item_seq)
        x = self.item_emb(item_seq) * math.sqrt(self.hidden_dim)
        x = x + self.pos_emb(right_aligned_positions(item_seq, self.cfg.max_len))
        x = self.emb_drop(x) * valid.unsqueeze(-1)
        length = item_seq.shape[1]
        causal = torch.ones(length, length, dtype=torch.bool, device=item_seq.device).tril()
        # Keys must be real items; every query may see itself so that all-padding rows stay finite.
        attn_mask = (causal & valid[:, None, :]) | torch.eye(length, dtype=torch.bool, device=item_seq.device)
        attn_mask = attn_mask.unsqueeze(1)
        for block in self.blocks:
            x = block(x, attn_mask) * valid.unsqueeze(-1)
        return self.ln_out(x)
