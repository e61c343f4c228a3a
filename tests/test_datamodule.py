"""The datamodule: training windows, samplers, evaluation batches and the processed cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from datamodules.cache import ensure_processed, processed_dir
from datamodules.constants import PAD_ID
from datamodules.datamodule import EvalData, SeqDataModule
from datamodules.samplers import BucketBatchSampler, ShardedEvalSampler
from lightning_modules.config import compose
from tests.conftest import tiny_args


def test_training_windows_visit_every_training_position_once(tiny_datamodule) -> None:
    data, train = tiny_datamodule.data, tiny_datamodule.train_data
    users = torch.arange(1, data.num_users + 1)
    assert train.num_positions == int((data.train_length(users) - 1).clamp(min=0).sum())
    batch = train[(0, 0, 0, list(range(len(train))))]
    # Targets are the inputs shifted by one; padding on the left of both.
    assert torch.equal(batch.item_seq[:, 1:][batch.pos_items[:, :-1] != PAD_ID], batch.pos_items[:, :-1][batch.pos_items[:, :-1] != PAD_ID])
    assert ((batch.item_seq == PAD_ID) == (batch.pos_items == PAD_ID)).all()
    # Negatives: one per real position, never an item of the user's training history.
    assert batch.neg_items.shape == (*batch.pos_items.shape, 2)
    for row, user in enumerate(batch.user_ids.tolist()):
        start = int(data.seq_offsets[user])
        history = set(data.seq_items[start : start + int(data.train_length(torch.tensor([user])))].tolist())
        real = batch.neg_items[row][batch.pos_items[row] != PAD_ID]
        assert not set(real.flatten().tolist()) & history


def test_long_sequences_are_cut_into_windows(tmp_path: Path) -> None:
    cfg = compose(tiny_args(tmp_path, "sasrec", "data.max_len=4"))
    dm = SeqDataModule(cfg.data)
    dm.prepare_data()
    dm.setup()
    assert int(dm.train_data.lengths.max()) == 4
    users = torch.arange(1, dm.num_users + 1)
    assert dm.train_data.num_positions == int((dm.data.train_length(users) - 1).clamp(min=0).sum())


def test_bucket_sampler_gives_disjoint_equal_shards_and_is_seeded() -> None:
    lengths = torch.randint(1, 30, (1001,), generator=torch.Generator().manual_seed(0))
    shards = [list(BucketBatchSampler(lengths, 16, seed=1, num_replicas=2, rank=r)) for r in (0, 1)]
    seen = [{i for *_, batch in shard for i in batch} for shard in shards]
    assert not seen[0] & seen[1]
    assert len(shards[0]) == len(shards[1]) == len(BucketBatchSampler(lengths, 16, seed=1, num_replicas=2, rank=0))
    whole = list(BucketBatchSampler(lengths, 16, seed=1))
    assert len(whole) - 1 <= 2 * len(shards[0]) <= len(whole)  # at most one batch dropped for 2 ranks
    assert sorted(i for *_, batch in whole for i in batch) == list(range(1001))


def test_bucket_batches_hold_about_the_same_number_of_positions() -> None:
    lengths = torch.randint(1, 50, (5000,), generator=torch.Generator().manual_seed(0))
    budget = 32 * float(lengths.float().mean())
    sizes = [int(lengths[batch].sum()) for *_, batch in BucketBatchSampler(lengths, 32, seed=0, bucket_factor=20)]
    full = sorted(sizes)[len(sizes) // 10 :]  # the last batch of each chunk may be short
    assert max(sizes) <= budget + 50 and min(full) >= budget - 50
    assert list(BucketBatchSampler(lengths, 16, seed=1)) == list(BucketBatchSampler(lengths, 16, seed=1))
    sampler = BucketBatchSampler(lengths, 16, seed=1)
    first = list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) != first


def test_eval_sampler_covers_every_user_exactly_once() -> None:
    parts = [ShardedEvalSampler(101, 8, num_replicas=3, rank=r) for r in range(3)]
    indices = sorted(i for p in parts for batch in p for i in batch)
    assert indices == list(range(101))


def test_eval_batches_hold_history_before_the_target(tiny_datamodule) -> None:
    data = tiny_datamodule.data
    for split, offset in (("val", 2), ("test", 1)):
        ds = EvalData(data, split, max_len=5)
        batch = ds[list(range(len(ds)))]
        for row, user in enumerate(batch.user_ids.tolist()):
            seq = data.seq_items[data.seq_offsets[user] : data.seq_offsets[user + 1]].tolist()
            assert batch.candidates[row, 0].item() == seq[-offset]
            assert [i for i in batch.history[row].tolist() if i] == seq[:-offset]
            assert [i for i in batch.item_seq[row].tolist() if i] == seq[:-offset][-5:]


def test_cache_is_reused_and_rebuilt_when_the_recipe_changes(tmp_path: Path) -> None:
    cfg = compose(tiny_args(tmp_path))
    folder = ensure_processed(cfg.data)
    stamp = (folder / "dataset.pt").stat().st_mtime_ns
    ensure_processed(cfg.data)
    assert (folder / "dataset.pt").stat().st_mtime_ns == stamp
    cfg2 = compose(tiny_args(tmp_path, "sasrec", "data.eval_seed=7"))
    ensure_processed(cfg2.data)
    assert json.loads((folder / "meta.json").read_text())["source"]["eval_seed"] == 7


def test_a_failing_preprocess_leaves_no_half_written_cache(tmp_path: Path) -> None:
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    (prepared / "items.csv").write_text("item_id,title,description\na,Alpha,\nb,Beta,\n")
    (prepared / "interactions.csv").write_text("user_id,item_id,timestamp\nu1,a,1\nu1,zzz,2\n")
    cfg = compose(["data=mine", f"data.data_dir={prepared}", f"data.root={tmp_path / 'data'}"])
    with pytest.raises(ValueError, match=r"interactions\.csv.*line 3.*zzz"):
        ensure_processed(cfg.data)
    folder = processed_dir(cfg.data)
    assert not folder.exists() or not any(folder.iterdir())


def test_users_with_fewer_than_three_interactions_train_only(tmp_path: Path) -> None:
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    (prepared / "items.csv").write_text("item_id,title\n" + "".join(f"i{k},Item {k}\n" for k in range(30)))
    rows = [f"long,i{k},{k}" for k in range(5)] + ["short,i7,1", "short,i8,2"]
    (prepared / "interactions.csv").write_text("user_id,item_id,timestamp\n" + "\n".join(rows) + "\n")
    cfg = compose(["data=mine", f"data.data_dir={prepared}", f"data.root={tmp_path / 'data'}", "data.num_eval_negatives=2"])
    dm = SeqDataModule(cfg.data, input_kind="user")
    dm.prepare_data()
    dm.setup()
    assert dm.data.eval_users.tolist() == [1]
    pairs = dm.train_data.pairs.tolist()
    assert [2, 6] in pairs and [2, 7] in pairs  # the short user's both items are training data


def test_atomic_writes_get_the_usual_permissions(tmp_path):
    import os
    import stat

    from datamodules.cache import atomic_write_json

    atomic_write_json(tmp_path / "m.json", {"a": 1})
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE((tmp_path / "m.json").stat().st_mode) == 0o666 & ~mask
