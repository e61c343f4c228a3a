"""Pop: the most-popular-items baseline.

Every user gets the same ranking: items ordered by how often they occur in the training
interactions (RecBole's ``general_recommender/pop.py``). Nothing is trained.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from backbones.base import Backbone, BackboneConfig
from backbones.lightgcn import check_interactions
from datamodules.batch import SeqBatch
from datamodules.constants import PAD_ID


@dataclass
class PopConfig(BackboneConfig):
    name: str = "pop"
    hidden_dim: int = 1  # (int) unused: the "embeddings" are a constant user vector and the item counts


class Pop(Backbone):
    """Popularity baseline over user ids (the user id is ignored).

    ``hidden_dim`` is 1 so that the default dot product also works:

    - ``encode_user(batch) -> [B, 1]`` of ones
    - ``item_embeddings(ids) -> [..., 1]``: training interaction counts
    - ``score(batch, item_ids [B, C]) -> [B, C]``, ``score_all(batch) -> [B, N]``: the counts
    """

    config_class = PopConfig

    input_kind = "user"
    needs_interactions = True
    trainable = False

    def __init__(self, cfg: PopConfig, num_items: int, num_users: int | None, interactions: Tensor) -> None:
        super().__init__()
        check_interactions(interactions, num_items, num_users)
        self.cfg = cfg
        self.num_items = num_items
        self.hidden_dim = 1
        counts = torch.bincount(interactions[:, 1].long(), minlength=num_items + 1).float()
        counts[PAD_ID] = 0.0
        self.register_buffer("counts", counts)

    def encode_user(self, batch: SeqBatch) -> Tensor:
        return self.counts.new_ones(len(batch), 1)

    def item_embeddings(self, item_ids: Tensor | None = None) -> Tensor:
        counts = self.counts if item_ids is None else self.counts[item_ids]
        return counts.unsqueeze(-1)

    def score(self, batch: SeqBatch, item_ids: Tensor) -> Tensor:
        return self.counts[item_ids]

    def score_all(self, batch: SeqBatch) -> Tensor:
        # A real copy, not an expand() view: callers mask history in place.
        return self.counts.repeat(len(batch), 1)
