"""Adding a backbone is its file and one registry entry: a throwaway backbone, registered here and
nowhere else (no YAML, no fixture, no name list), trains and feeds a later stage end to end."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from backbones import BACKBONES
from backbones.base import Backbone, BackboneConfig
from datamodules.batch import SeqBatch
from datamodules.constants import PAD_ID
from lightning_modules.config import compose, options
from lightning_modules.run import main
from tests.conftest import tiny_args


@dataclass
class MarkovConfig(BackboneConfig):
    name: str = "markov"
    hidden_dim: int = 16


class Markov(Backbone):
    """A first-order Markov model: the state after an item is a linear map of its embedding."""

    config_class = MarkovConfig

    def __init__(self, cfg: MarkovConfig, num_items: int, num_users: int | None = None) -> None:
        super().__init__()
        self.num_items, self.hidden_dim = num_items, cfg.hidden_dim
        self.item_emb = nn.Embedding(num_items + 1, cfg.hidden_dim, padding_idx=PAD_ID)
        self.step = nn.Linear(cfg.hidden_dim, cfg.hidden_dim)

    def sequence_output(self, item_seq: Tensor) -> Tensor:
        return self.step(self.item_emb(item_seq))

    def encode_user(self, batch: SeqBatch) -> Tensor:
        return self.sequence_output(batch.item_seq[:, -1:])[:, 0]  # left-padded: the last column is the latest item

    def item_embeddings(self, item_ids: Tensor | None = None) -> Tensor:
        return self.item_emb.weight if item_ids is None else self.item_emb(item_ids)


def test_a_backbone_registered_in_one_line_trains_and_feeds_stage_one(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(BACKBONES, "markov", Markov)  # the one registry line
    assert "markov" in options("backbone")
    cfg = compose(tiny_args(tmp_path, "markov"))
    assert isinstance(cfg.backbone, MarkovConfig) and cfg.backbone.hidden_dim == 16

    torch.manual_seed(0)
    assert main(tiny_args(tmp_path, "markov", "stage.max_epochs=6", "stage.lr=0.01", "data.synthetic_users=300")) == 0
    metrics = json.loads((tmp_path / "runs" / "synthetic" / "cf_pretrain" / "markov" / "metrics.json").read_text())
    assert metrics["backbone"] == "markov" and metrics["epochs"] == 6
    # random: 1/20; a first-order model cannot tell which of the 5 strides a user moves by, so about 1/5 at best
    assert metrics["test/hit@1"] > 0.12
    assert main(tiny_args(tmp_path, "markov", "stage=align_stage1", "text_encoder=hashing", "stage.max_epochs=1",
                          "data.synthetic_users=300")) == 0
    stage1 = json.loads((tmp_path / "runs" / "synthetic" / "align_stage1" / "markov" / "metrics.json").read_text())
    assert stage1["test/backbone/hit@1"] == metrics["test/hit@1"]  # stage 1 read the trained backbone, frozen
