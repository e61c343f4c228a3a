"""Stage runs on tiny synthetic data through the real entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from backbones import BACKBONES
from lightning_modules.config import compose
from lightning_modules.run import main, run
from tests.conftest import tiny_args

REQUIRED = ("test/hit@1", "test/hit@10", "test/ndcg@10", "test/mrr", "test/full/hit@10", "test/full/ndcg@10",
            "train_seconds", "epochs", "seconds_per_epoch")


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_backbone_trains_and_writes_artifacts(tmp_path: Path, name: str) -> None:
    metrics = run(compose(tiny_args(tmp_path, name)))
    run_dir = tmp_path / "runs" / "synthetic" / "cf_pretrain" / name
    written = json.loads((run_dir / "metrics.json").read_text())
    for key in REQUIRED:
        assert key in written, key
    assert written["test/hit@1"] == pytest.approx(metrics["test/hit@1"])
    assert (run_dir / "config.yaml").is_file() and (run_dir / "weights.pt").is_file()
    assert written["epochs"] == (0 if name == "pop" else 2)
    weights = torch.load(run_dir / "weights.pt")
    assert not any(k.startswith("backbone.") for k in weights)  # the backbone's own state dict


@pytest.mark.parametrize("loss", ["bce", "bpr"])
def test_sampled_losses_learn_more_than_popularity(tmp_path: Path, loss: str) -> None:
    args = ("data.synthetic_users=300", "stage.max_epochs=6", f"backbone.loss={loss}", "backbone.num_negatives=2")
    pop = run(compose(tiny_args(tmp_path, "pop", *args)))
    sasrec = run(compose(tiny_args(tmp_path, "sasrec", *args)))
    lightgcn = run(compose(tiny_args(tmp_path, "lightgcn", *args)))
    # measured: pop 0.02 / 0.28, SASRec about 0.3 / 0.95, LightGCN 0.07 / 0.41 (Hit@1 / full Hit@10)
    assert sasrec["test/hit@1"] > 0.2 and sasrec["test/full/hit@10"] > 0.8
    assert lightgcn["test/full/hit@10"] > pop["test/full/hit@10"] + 0.05
    assert lightgcn["test/hit@1"] > pop["test/hit@1"]


def test_same_seed_same_metrics(tmp_path: Path) -> None:
    first = run(compose(tiny_args(tmp_path / "a", "sasrec", "backbone.loss=bce")))
    second = run(compose(tiny_args(tmp_path / "b", "sasrec", "backbone.loss=bce")))
    timing = {"train_seconds", "seconds_per_epoch", "val_seconds_per_epoch", "test_seconds"}
    assert {k: v for k, v in first.items() if k not in timing} == {k: v for k, v in second.items() if k not in timing}


def test_sasrec_learns_the_synthetic_pattern(tmp_path: Path) -> None:
    metrics = run(compose(tiny_args(tmp_path, "sasrec", "stage.max_epochs=8", "data.synthetic_users=300")))
    assert metrics["test/hit@1"] > 0.2  # random: 1/20
    assert metrics["test/full/hit@10"] > 0.6  # random: 10 of 40 items


def test_main_reports_config_errors_without_a_traceback(capsys, caplog) -> None:
    assert main(["backbone=nope"]) == 2
    assert "unknown backbone 'nope'" in caplog.text


def test_wandb_is_offline_without_an_account_and_env_wins(tmp_path: Path, monkeypatch) -> None:
    from callbacks.loggers import build_loggers, resolve_wandb_mode

    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert resolve_wandb_mode() == "offline"
    assert resolve_wandb_mode("online") == "online"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert resolve_wandb_mode() == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_wandb_mode("online") == "disabled"
    loggers = build_loggers("wandb", tmp_path, "run", "synthetic/sasrec", "cf_pretrain", project="p")
    assert [type(lg).__name__ for lg in loggers] == ["CSVLogger", "WandbLogger"]
    assert build_loggers("none", tmp_path, "run", "g", "j", project="p") == []
