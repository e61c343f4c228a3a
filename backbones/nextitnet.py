"""NextItNet: dilated causal convolutions for next-item recommendation.

Yuan et al., "A Simple Convolutional Generative Network for Next Item Recommendation", WSDM 2019.
A stack of residual blocks; each block is two dilated causal 1-D convolutions (dilation d, then
2d, as in the official code and RecBole's ``ResidualBlock_b``), each followed by LayerNorm and
ReLU, added to the block input. Scores are dot products with the item embedding table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from backbones.base import SequentialBackbone, SequentialConfig, pad_mask
from datamodules.constants import PAD_ID


@dataclass
class NextItNetConfig(SequentialConfig):
    tiny: ClassVar[dict[str, Any]] = dict(hidden_dim=16, dilations=[1, 2, 4])

    name: str = "nextitnet"
    hidden_dim: int = 64  # (int) item embedding size = residual channels
    dilations: list[int] = field(default_factory=lambda: [1, 2, 4, 1, 2, 4])  # (list) one residual block each
    kernel_size: int = 3  # (int) width of every dilated convolution
    dropout: float = 0.2  # (float) dropout on the item embeddings (the paper uses none)
    max_len: int = 50  # (int) longest history read; longer inputs keep their last max_len items

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.dilations or any(d < 1 for d in self.dilations):
            raise ValueError(f"backbone.dilations must be a non-empty list of ints >= 1, got {self.dilations}")
        if self.kernel_size < 1:
            raise ValueError(f"backbone.kernel_size must be >= 1, got {self.kernel_size}")


class _CausalConv(nn.Module):
    """Dilated 1-D convolution over ``[B, L, D]`` whose output at t reads inputs <= t only."""

    def __init__(self, dim: int, kernel_size: int, dilation: int) -> None:
        super().__init__()
        self.left_pad = (kernel_size - 1) * dilation
        self.conv = nn.Conv1d(dim, dim, kernel_size, dilation=dilation)

    def forward(self, x: Tensor) -> Tensor:
        # Padding only on the left is what makes the convolution causal.
        return self.conv(F.pad(x.transpose(1, 2), (self.left_pad, 0))).transpose(1, 2)


class _ResidualBlock(nn.Module):
    """x + ReLU(LN(conv_2d(ReLU(LN(conv_d(x)))))) with padding positions zeroed after each half."""

    def __init__(self, dim: int, kernel_size: int, dilation: int) -> None:
        super().__init__()
        self.conv1 = _CausalConv(dim, kernel_size, dilation)
        self.ln1 = nn.LayerNorm(dim)
        self.conv2 = _CausalConv(dim, kernel_size, 2 * dilation)
        self.ln2 = nn.LayerNorm(dim)

    def forward(self, x: Tensor, valid: Tensor) -> Tensor:
        # LayerNorm's bias makes padding positions non-zero; a later convolution would read them
        # where a less-padded batch reads its explicit zero padding, so they are zeroed each time.
        h = F.relu(self.ln1(self.conv1(x))) * valid
        h = F.relu(self.ln2(self.conv2(h))) * valid
        return x + h


class NextItNet(SequentialBackbone):
    """NextItNet over left-padded item sequences.

    ``sequence_output(item_seq [B, L]) -> [B, L, D]`` is zero at padding positions.
    """

    config_class = NextItNetConfig

    def __init__(self, cfg: NextItNetConfig, num_items: int, num_users: int | None = None) -> None:
        super().__init__(cfg, num_items)
        self.blocks = nn.ModuleList(_ResidualBlock(cfg.hidden_dim, cfg.kernel_size, d) for d in cfg.dilations)
        self.final = nn.Linear(cfg.hidden_dim, cfg.hidden_dim)
        self._init_weights()

    def _init_weights(self) -> None:
        # RecBole's NextItNet init: uniform(+-1/sqrt(n_items)) embeddings, xavier-normal linear with bias 0.1.
        bound = 1.0 / math.sqrt(self.num_items + 1)
        nn.init.uniform_(self.item_emb.weight, -bound, bound)
        with torch.no_grad():
            self.item_emb.weight[PAD_ID].zero_()
        nn.init.xavier_normal_(self.final.weight)
        nn.init.constant_(self.final.bias, 0.1)

    def sequence_output(self, item_seq: Tensor) -> Tensor:
        item_seq = self.clip(item_seq)
        valid = pad_mask(item_seq).unsqueeze(-1)
        x = self.emb_drop(self.item_emb(item_seq)) * valid
        for block in self.blocks:
            x = block(x, valid)
        return self.final(x) * valid
