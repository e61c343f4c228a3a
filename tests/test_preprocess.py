"""Known-answer tests of the pure preprocessing and sampling functions."""

from __future__ import annotations

import numpy as np
import torch

from datamodules.constants import PAD_ID
from datamodules.preprocess import build_sequences, leave_one_out, preprocess, remap_ids, sample_eval_candidates
from datamodules.sampling import sample_batch_negatives, sample_negatives


def test_remap_ids_first_appearance_with_padding_zero() -> None:
    user_raw, item_raw, users, items, times = remap_ids([("b", "x", 5), ("a", "y", 3), ("b", "y", 1)])
    assert user_raw == ["<pad>", "b", "a"] and item_raw == ["<pad>", "x", "y"]
    assert users.tolist() == [1, 2, 1] and items.tolist() == [1, 2, 2] and times.tolist() == [5, 3, 1]


def test_build_sequences_is_chronological_and_stable_on_ties() -> None:
    # User 1: items 3 and 1 share timestamp 10 and must keep input order (3 before 1); item 2 is older.
    users = np.array([1, 1, 2, 1])
    items = np.array([3, 1, 4, 2])
    times = np.array([10, 10, 7, 5])
    offsets, seq, seq_times = build_sequences(users, items, times, num_users=2)
    assert offsets.tolist() == [0, 0, 3, 4]
    assert seq[offsets[1] : offsets[2]].tolist() == [2, 3, 1]
    assert seq_times.tolist() == [5, 10, 10, 7]


def test_leave_one_out_positions() -> None:
    assert leave_one_out(5) == (slice(0, 3), 3, 4)
    assert leave_one_out(3) == (slice(0, 1), 1, 2)
    # Fewer than 3 interactions: training only (A-LLMRec's rule).
    assert leave_one_out(2) == (slice(0, 2), None, None)


def test_eval_candidates_exclude_whole_history_and_are_seeded() -> None:
    offsets = np.array([0, 0, 5, 7])
    items = np.array([1, 2, 3, 4, 5, 6, 7])
    valid, test = sample_eval_candidates(offsets, items, num_items=40, num_negatives=19, seed=3)
    assert valid[1, 0] == 4 and test[1, 0] == 5
    for row in (valid[1], test[1]):
        assert len(set(row.tolist())) == 20
        assert not set(row[1:].tolist()) & {1, 2, 3, 4, 5}
    assert (valid[2] == 0).all() and (test[2] == 0).all()  # a 2-item user is not evaluated
    again = sample_eval_candidates(offsets, items, num_items=40, num_negatives=19, seed=3)
    assert (again[0] == valid).all() and (again[1] == test).all()
    other = sample_eval_candidates(offsets, items, num_items=40, num_negatives=19, seed=4)
    assert not (other[1] == test).all()


def test_sample_negatives_never_returns_history_and_is_deterministic() -> None:
    history = {1, 2, 3, 4}
    draw = sample_negatives(history, 5, 10, np.random.default_rng(0))
    assert len(set(draw.tolist())) == 5 and not set(draw.tolist()) & (history | {PAD_ID})
    assert (draw == sample_negatives(history, 5, 10, np.random.default_rng(0))).all()


def test_sample_negatives_raises_when_catalogue_is_exhausted() -> None:
    import pytest

    with pytest.raises(ValueError, match="only 2 of 6 items"):
        sample_negatives({1, 2, 3, 4}, 3, 6, np.random.default_rng(0))


def test_batch_negatives_avoid_each_rows_history() -> None:
    history = torch.tensor([[1, 2, 3, 0], [4, 5, 0, 0]])
    neg = sample_batch_negatives(history, (2, 7, 3), num_items=8, generator=torch.Generator().manual_seed(0))
    assert neg.shape == (2, 7, 3)
    assert not torch.isin(neg[0], torch.tensor([0, 1, 2, 3])).any()
    assert not torch.isin(neg[1], torch.tensor([0, 4, 5])).any()
    again = sample_batch_negatives(history, (2, 7, 3), num_items=8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(neg, again)


def test_preprocess_end_to_end_on_a_handful_of_interactions() -> None:
    interactions = [("u1", f"i{k}", k) for k in range(6)] + [("u2", "i0", 1), ("u2", "i9", 2)]
    items = {f"i{k}": (f"title {k}", "") for k in range(10)}
    data = preprocess(interactions, items, num_negatives=1, seed=0)
    assert data.num_users == 2 and data.num_items == 7  # i0..i5 and i9; items without interactions dropped
    assert data.titles[PAD_ID] == "" and data.titles[1] == "title 0"
    assert data.eval_users.tolist() == [1]
    assert data.train_length(torch.tensor([1, 2])).tolist() == [4, 2]
    pairs = data.train_interactions()
    assert pairs.tolist() == [[1, 1], [1, 2], [1, 3], [1, 4], [2, 1], [2, 7]]
    assert data.stats["num_train_only_users"] == 1
