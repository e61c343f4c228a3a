"""Known answers for the ranking metrics and the rank computations."""

from __future__ import annotations

import math

import torch

from callbacks.ranking import MRR, NDCG, HitRate, full_ranks, sampled_metrics, sampled_ranks


def test_sampled_ranks_count_ties_against_the_target() -> None:
    scores = torch.tensor([[5.0, 1.0, 2.0], [1.0, 3.0, 0.0], [2.0, 2.0, 2.0]])
    assert sampled_ranks(scores).tolist() == [0, 1, 2]


def test_hit_ndcg_mrr_known_values() -> None:
    ranks = torch.tensor([0, 1, 4, 12])
    hit = HitRate(5)
    hit.update(ranks)
    assert hit.compute().item() == 0.75
    ndcg = NDCG(5)
    ndcg.update(ranks)
    expected = (1.0 + 1 / math.log2(3) + 1 / math.log2(6) + 0.0) / 4
    assert abs(ndcg.compute().item() - expected) < 1e-12
    mrr = MRR()
    mrr.update(ranks)
    assert abs(mrr.compute().item() - (1 + 1 / 2 + 1 / 5 + 1 / 13) / 4) < 1e-12


def test_metrics_accumulate_over_batches_like_one_batch() -> None:
    ranks = torch.randint(0, 20, (101,), generator=torch.Generator().manual_seed(0))
    whole, parts = sampled_metrics(), sampled_metrics()
    whole.update(ranks)
    for chunk in ranks.split(17):
        parts.update(chunk)
    assert {k: v.item() for k, v in whole.compute().items()} == {k: v.item() for k, v in parts.compute().items()}


def test_full_ranks_mask_padding_and_history_but_not_the_target() -> None:
    # Items 0 (padding) .. 5. Target item 2 scores 0.5; items 4 and 5 score higher, item 4 is history.
    scores = torch.tensor([[9.0, 0.1, 0.5, 0.2, 3.0, 1.0]])
    history = torch.tensor([[4, 2, 0]])  # the target also appears in history (a repeat): still ranked
    assert full_ranks(scores, torch.tensor([2]), history).tolist() == [1]  # only item 5 is above it
    assert full_ranks(scores, torch.tensor([2]), torch.zeros(1, 0, dtype=torch.long)).tolist() == [2]


def test_non_finite_scores_raise_in_every_ranking_path() -> None:
    import pytest

    from callbacks.ranking import multi_target_positions
    from lightning_modules.face_outputs import draw_candidates, interpretability_hits

    nan_target = torch.tensor([[float("nan"), 1.0, 2.0]])  # compared with >=, a NaN target would be a free hit
    with pytest.raises(ValueError, match="sampled ranking: 1 of 3 scores are NaN or infinite"):
        sampled_ranks(nan_target)
    with pytest.raises(ValueError, match="full ranking"):
        full_ranks(torch.tensor([[0.0, float("inf"), 1.0, 2.0]]), torch.tensor([1]), torch.zeros(1, 0, dtype=torch.long))
    with pytest.raises(ValueError, match="multi-target full ranking"):
        multi_target_positions(torch.tensor([[0.0, float("nan"), 1.0]]), torch.tensor([[1]]), torch.zeros(1, 0, dtype=torch.long), 2)
    titles = torch.randn(12, 4)
    with pytest.raises(ValueError, match="interpretability accuracy"):
        interpretability_hits(torch.full((2, 4), float("nan")), titles, draw_candidates(torch.tensor([1, 2]), 11, 3, seed=0))
    assert sampled_ranks(torch.tensor([[3.0, 1.0, 2.0]])).tolist() == [0]  # finite scores still rank
