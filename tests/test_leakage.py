"""No leakage from the evaluation targets into what models train on, checked on the batches the
datamodule actually serves (every input kind) and on the frozen candidate lists."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest
import torch

from datamodules.constants import PAD_ID
from datamodules.datamodule import SeqDataModule
from lightning_modules.config import compose
from tests.conftest import BEAUTY_PREPARED, tiny_args


def _datamodule(cfg, kind: str) -> SeqDataModule:
    dm = SeqDataModule(cfg.data, input_kind=kind, num_negatives=2, seed=0)
    dm.prepare_data()
    dm.setup()
    return dm


def _rows(tensor: torch.Tensor) -> list[list[int]]:
    return [[i for i in row if i != PAD_ID] for row in tensor.tolist()]


def assert_no_leakage(cfg) -> int:
    """Every guarantee of the protocol, for every user; returns the number of evaluated users checked."""
    dm = _datamodule(cfg, "sequence")
    data = dm.data
    seqs = {u: data.seq_items[data.seq_offsets[u] : data.seq_offsets[u + 1]].tolist() for u in range(1, data.num_users + 1)}
    n_train = {u: int(n) for u, n in zip(range(1, data.num_users + 1), data.train_length(torch.arange(1, data.num_users + 1)).tolist())}
    evaluated = set(data.eval_users.tolist())
    assert evaluated == {u for u, s in seqs.items() if len(s) >= 3} and evaluated
    for u in evaluated:
        assert n_train[u] == len(seqs[u]) - 2  # the validation and test positions are not training positions

    # Sequence windows: every training position exactly once as a target, nothing after it as input.
    targets: dict[int, Counter] = {u: Counter() for u in seqs}
    for batch in dm.train_dataloader():
        for user, inputs, pos in zip(batch.user_ids.tolist(), batch.item_seq.tolist(), batch.pos_items.tolist()):
            train = seqs[user][: n_train[user]]
            real = [(i, p) for i, p in zip(inputs, pos) if p != PAD_ID]
            targets[user].update(p for _, p in real)
            assert [p for _, p in real][:-1] == [i for i, _ in real][1:]  # each target is the next input
            window = [i for i, _ in real] + [real[-1][1]]  # inputs, then the last target: a contiguous training span
            assert any(train[j : j + len(window)] == window for j in range(len(train))), (user, window)
    for user, seq in seqs.items():
        assert targets[user] == Counter(seq[1 : n_train[user]]), user

    # User-item pairs (NCF, LightGCN): exactly the training interactions.
    pairs = Counter()
    for batch in _datamodule(cfg, "user").train_dataloader():
        pairs.update(zip(batch.user_ids.tolist(), batch.pos_items.tolist()))
    assert pairs == Counter((u, i) for u, s in seqs.items() for i in s[: n_train[u]])

    # Last-item examples (A-LLMRec): the last training item, the ones before it as history.
    for batch in _datamodule(cfg, "last_item").train_dataloader():
        for user, history, pos in zip(batch.user_ids.tolist(), _rows(batch.item_seq), batch.pos_items.tolist()):
            train = seqs[user][: n_train[user]]
            assert pos == train[-1] and history == train[:-1][-cfg.data.max_len :]

    # Evaluation: history up to the target, the target once in column 0, negatives outside the whole sequence.
    for split, offset in (("val", 2), ("test", 1)):
        loader = dm.val_dataloader() if split == "val" else dm.test_dataloader()
        seen = set()
        for batch in loader:
            for user, history, recent, cands in zip(batch.user_ids.tolist(), _rows(batch.history), _rows(batch.item_seq),
                                                    batch.candidates.tolist()):
                seq, target = seqs[user], seqs[user][-offset]
                assert history == seq[:-offset] and recent == seq[:-offset][-cfg.data.max_len :]
                assert cands[0] == target and cands.count(target) == 1
                assert PAD_ID not in cands and len(set(cands)) == len(cands)
                assert not set(cands[1:]) & set(seq), (user, split)
                seen.add(user)
        assert seen == evaluated
    return len(evaluated)


def test_no_leakage_on_synthetic_data(tmp_path: Path) -> None:
    assert assert_no_leakage(compose(tiny_args(tmp_path, "sasrec", "data.max_len=4"))) > 100  # windows cut long sequences


def test_no_leakage_on_a_prepared_folder_with_repeats_and_ties(tmp_path: Path) -> None:
    """Repeat purchases (the test item may also be a training item) and equal timestamps."""
    rng = random.Random(0)
    rows = ["user_id,item_id,timestamp"]
    for user in range(40):
        items = [rng.randrange(60) for _ in range(rng.randint(2, 9))]
        items.append(items[0])  # a repeat, last: the test target also sits in the history
        rows += [f"u{user},i{item},{1000 + k // 2}" for k, item in enumerate(items)]  # pairs share a timestamp
    folder = tmp_path / "shop"
    folder.mkdir()
    (folder / "interactions.csv").write_text("\n".join(rows) + "\n")
    (folder / "items.csv").write_text("item_id,title\n" + "".join(f"i{i},Item {i}\n" for i in range(60)))
    cfg = compose(["data=shop", f"data.data_dir={folder}", f"data.root={tmp_path / 'data'}", "data.max_len=3"])
    assert assert_no_leakage(cfg) >= 30


@pytest.mark.slow
@pytest.mark.skipif(not BEAUTY_PREPARED.is_dir(), reason=f"real data not found at {BEAUTY_PREPARED}")
def test_no_leakage_on_beauty(tmp_path: Path) -> None:
    cfg = compose(["data=beauty", f"data.data_dir={BEAUTY_PREPARED}", f"data.root={tmp_path / 'data'}"])
    assert assert_no_leakage(cfg) == 22363
