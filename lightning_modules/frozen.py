"""A mixin for stage modules that hold frozen submodules (a pretrained backbone, an LLM, a text encoder)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def keep_sparse_buffers_local(module: nn.Module) -> None:
    """Tells DDP not to broadcast ``module``'s sparse buffers (LightGCN's adjacency): gloo and NCCL
    cannot, and every rank builds the same one from the same data. Call it from ``setup``, which
    runs before the strategy syncs module states."""
    module._ddp_params_and_buffers_to_ignore = [name for name, buf in module.named_buffers() if buf.layout != torch.strided]


class FrozenParts:
    """Submodules named in ``frozen`` stay in eval mode while the module trains (no dropout), and
    their weights are left out of checkpoints: the run rebuilds them from their sources, so such
    modules load checkpoints with ``strict_loading = False``.

    Put it before the LightningModule base: ``class M(FrozenParts, L.LightningModule)``.
    """

    frozen: tuple[str, ...] = ()

    def setup(self, stage: str) -> None:
        super().setup(stage)
        keep_sparse_buffers_local(self)

    def train(self, mode: bool = True):
        super().train(mode)
        for name in self.frozen:
            getattr(self, name).eval()
        return self

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        prefixes = tuple(f"{name}." for name in self.frozen)
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith(prefixes)]:
            del state[key]
