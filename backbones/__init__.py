"""CF backbones as plain ``nn.Module``s, and the registry that builds them by name.

Keys equal module file names (``sasrec`` <-> ``backbones/sasrec.py``). Adding a backbone is its
file (a :class:`~backbones.base.Backbone` subclass with its ``config_class``) and one line in
:data:`BACKBONES`; configs, tests and name lists derive from it (CONTRIBUTING.md).
"""

from __future__ import annotations

from torch import Tensor

from backbones.base import Backbone, BackboneConfig, RecBackbone
from backbones.gru4rec import GRU4Rec, GRU4RecConfig
from backbones.lightgcn import LightGCN, LightGCNConfig
from backbones.ncf import NCF, NCFConfig
from backbones.nextitnet import NextItNet, NextItNetConfig
from backbones.pop import Pop, PopConfig
from backbones.sasrec import SASRec, SASRecConfig

BACKBONES: dict[str, type[Backbone]] = {
    "sasrec": SASRec,
    "gru4rec": GRU4Rec,
    "nextitnet": NextItNet,
    "ncf": NCF,
    "lightgcn": LightGCN,
    "pop": Pop,
}


def _check_name(name: str) -> None:
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; expected one of {sorted(BACKBONES)}")


def backbone_config(name: str) -> type[BackboneConfig]:
    """The config dataclass of backbone ``name``."""
    _check_name(name)
    return BACKBONES[name].config_class


def build_backbone(
    cfg: BackboneConfig, num_items: int, num_users: int | None, interactions: Tensor | None = None
) -> Backbone:
    """Build the backbone named ``cfg.name``.

    ``interactions`` (``[E, 2]`` training ``(user_id, item_id)`` pairs) reaches only backbones
    with ``needs_interactions`` (LightGCN, Pop); for them it is required.
    """
    _check_name(cfg.name)
    cls = BACKBONES[cfg.name]
    if not isinstance(cfg, cls.config_class):
        raise TypeError(f"backbone {cfg.name!r} expects a {cls.config_class.__name__}, got {type(cfg).__name__}")
    if cls.needs_interactions:
        if interactions is None:
            raise ValueError(
                f"backbone {cfg.name!r} is built from the training interactions; pass interactions "
                "as a LongTensor [E, 2] of (user_id, item_id)"
            )
        return cls(cfg, num_items, num_users, interactions)
    return cls(cfg, num_items, num_users)


__all__ = [
    "BACKBONES",
    "Backbone",
    "BackboneConfig",
    "RecBackbone",
    "backbone_config",
    "build_backbone",
    "GRU4Rec",
    "GRU4RecConfig",
    "LightGCN",
    "LightGCNConfig",
    "NCF",
    "NCFConfig",
    "NextItNet",
    "NextItNetConfig",
    "Pop",
    "PopConfig",
    "SASRec",
    "SASRecConfig",
]
