"""Config composition: every YAML composes; bad names, keys and values give clear errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from backbones.sasrec import SASRecConfig
from lightning_modules.config import GROUPS, compose, options


@pytest.mark.parametrize("group", GROUPS)
def test_every_option_of_every_group_composes(group: str) -> None:
    for option in options(group):
        cfg = compose([f"{group}={option}"])
        assert getattr(cfg, group).name == option


def test_overrides_are_typed_dataclasses() -> None:
    cfg = compose(["backbone=sasrec", "backbone.hidden_dim=32", "seed=7", "stage.lr=0.01"])
    assert isinstance(cfg.backbone, SASRecConfig)
    assert cfg.backbone.hidden_dim == 32 and cfg.seed == 7 and cfg.stage.lr == 0.01
    assert cfg.run_dir == Path("runs/synthetic/cf_pretrain/sasrec")


def test_misspelled_key_names_the_key_and_suggests_the_right_one() -> None:
    with pytest.raises(ValueError, match=r"unknown config key 'backbone\.hiden_dim'.*did you mean backbone\.hidden_dim"):
        compose(["backbone.hiden_dim=3"])


def test_misspelled_key_in_a_yaml_file_names_the_file(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    for group in GROUPS:
        (conf / group).mkdir(parents=True)
    src = Path(__file__).resolve().parents[1] / "conf"
    for group, option in (("data", "synthetic"), ("stage", "cf_pretrain"), ("trainer", "auto"), ("logger", "csv")):
        (conf / group / f"{option}.yaml").write_text((src / group / f"{option}.yaml").read_text())
    (conf / "backbone" / "sasrec.yaml").write_text("name: sasrec\nnum_layer: 2\n")
    with pytest.raises(ValueError, match=r"num_layer.*backbone/sasrec\.yaml.*did you mean backbone\.num_layers"):
        compose([], conf_dir=conf)


def test_unknown_dataset_lists_the_known_ones_and_how_to_bring_your_own() -> None:
    with pytest.raises(ValueError, match=r"unknown data 'beuaty'; expected one of \[.*'beauty'.*data\.data_dir"):
        compose(["data=beuaty"])


def test_unknown_backbone_lists_the_known_ones() -> None:
    from backbones import BACKBONES

    with pytest.raises(ValueError, match=re.escape(f"unknown backbone 'sasrek'; expected one of {sorted(BACKBONES)}")):
        compose(["backbone=sasrek"])


def test_bad_values_are_rejected_with_the_value() -> None:
    with pytest.raises(ValueError, match="backbone.loss must be one of .* got 'mse'"):
        compose(["backbone.loss=mse"])
    with pytest.raises(ValueError, match="hidden_dim.*'abc'"):
        compose(["backbone.hidden_dim=abc"])
    with pytest.raises(ValueError, match="not of the form key=value"):
        compose(["sasrec"])
    with pytest.raises(ValueError, match="ddp_spawn"):
        compose(["trainer.strategy=ddp_spawn"])


def test_own_dataset_name_with_a_prepared_folder_uses_the_prepared_recipe(tmp_path: Path) -> None:
    (tmp_path / "interactions.csv").write_text("user_id,item_id,timestamp\n")
    cfg = compose(["data=my_shop", f"data.data_dir={tmp_path}"])
    assert cfg.data.name == "my_shop" and cfg.data.source == "prepared"
