"""FACE's quantiser: nearest allowed token, straight-through gradients, distinct words, word vocabulary."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from aligners.vq_descriptor import VQDescriptorMapper, greedy_distinct_nearest, word_vocabulary


class _Tokenizer:
    """Just what word_vocabulary reads: ``len`` and ``convert_ids_to_tokens``."""

    def __init__(self, pieces: list[str]) -> None:
        self.pieces = pieces

    def __len__(self) -> int:
        return len(self.pieces)

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]:
        return [self.pieces[i] for i in ids]


def test_word_vocabulary_keeps_common_whole_lowercase_words():
    bpe = _Tokenizer(["<s>", "Ġred", "ing", "ĠThe", "Ġlipstick", "Ġxqzvw", "Ġ123", "Ġthe", "Ġshampoo", "Ġs"])
    ids, words = word_vocabulary(bpe, size=50000)
    assert words == ["red", "lipstick", "the", "shampoo"] and ids == [1, 4, 7, 8]
    wordpiece = _Tokenizer(["[CLS]", "red", "##ing", "the", "Soap", "brush"])
    assert word_vocabulary(wordpiece, size=50000)[1] == ["red", "the", "brush"]
    # A smaller frequency cut keeps only the most common words.
    assert word_vocabulary(bpe, size=100)[1] == ["the"]


def test_greedy_assignment_gives_each_slot_a_distinct_token():
    distances = torch.tensor([[[0.0, 1.0, 2.0], [0.1, 0.5, 3.0], [0.0, 0.2, 0.1]]])
    assert greedy_distinct_nearest(distances).tolist() == [[0, 1, 2]]


def _mapper(num_words: int = 4, k: int = 30, d: int = 12, lookup: str = "cosine") -> VQDescriptorMapper:
    torch.manual_seed(0)
    words = [f"w{i}" for i in range(k)]
    return VQDescriptorMapper(d, torch.randn(k, 10), words, num_words=num_words, word_dim=8, dropout=0.0, lookup=lookup)


@pytest.mark.parametrize("lookup", ["cosine", "euclidean"])
def test_quantiser_returns_the_nearest_allowed_token(lookup):
    mapper = _mapper(num_words=1, lookup=lookup).eval()
    x = torch.randn(16, 12)
    quantized, indices, _ = mapper(x)
    z_e = mapper.encode(x)
    codes = mapper.mapped_codebook()
    brute = torch.cdist(z_e[:, 0], codes).argmin(-1)
    assert torch.equal(indices[:, 0], brute)
    torch.testing.assert_close(quantized, codes[indices])  # forward value is the codebook row
    if lookup == "cosine":  # the nearest by angle to the unnormalised map's rows
        raw = mapper.codebook_map(mapper.codebook)
        assert torch.equal(indices[:, 0], (F.normalize(z_e[:, 0], dim=-1) @ F.normalize(raw, dim=-1).T).argmax(-1))


def test_straight_through_gradients_reach_the_encoder_and_the_input():
    mapper = _mapper()
    x = torch.randn(8, 12, requires_grad=True)
    quantized, _, vq_loss = mapper(x)
    (mapper.reconstruct(quantized).pow(2).mean() + vq_loss).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert mapper.concept_weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in mapper.encoder.parameters())
    assert mapper.codebook_map.weight.grad.abs().sum() > 0  # the codebook term trains the map


def test_tokens_within_an_entity_are_distinct_and_words_of_the_vocabulary():
    mapper = _mapper(num_words=8, k=10).eval()
    _, indices, _ = mapper(torch.randn(32, 12))
    assert all(len(set(row)) == 8 for row in indices.tolist())
    words = mapper.explain(indices)
    assert all(w in mapper.words for row in words for w in row)


def test_vq_and_reconstruction_loss_decrease_on_synthetic_data():
    mapper = _mapper(num_words=4, k=40)
    x = torch.randn(64, 12)
    optimizer = torch.optim.Adam(mapper.parameters(), lr=1e-3)
    losses = []
    for _ in range(150):
        quantized, _, vq_loss = mapper(x)
        loss = vq_loss + torch.nn.functional.mse_loss(mapper.reconstruct(quantized), x)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:10]) / 10


def test_small_inputs_and_an_offset_codebook_do_not_give_every_entity_the_same_words():
    # LLM embeddings share a large mean and CF embeddings are small: the init must still tell entities apart
    torch.manual_seed(0)
    codebook = torch.randn(500, 24) * 0.05 + 2.0
    mapper = VQDescriptorMapper(16, codebook, [f"w{i}" for i in range(500)], num_words=4, word_dim=8, dropout=0.0).eval()
    _, indices, _ = mapper(0.01 * torch.randn(50, 16))
    assert len({tuple(sorted(row)) for row in indices.tolist()}) > 40


def test_relaxed_words_keep_the_chosen_words_and_carry_gradients_to_the_mapper():
    from aligners.descriptor_text import relaxed_word_text

    mapper = _mapper(num_words=3, k=30)
    x = torch.randn(5, 12)
    z_e = mapper.encode(x)
    indices, near = mapper.search(z_e, neighbours=6)
    assert near.shape == (5, 3, 6)
    codes = mapper.mapped_codebook()
    brute = torch.cdist(z_e.detach(), codes.detach().expand(5, -1, -1)).topk(6, largest=False).indices
    assert torch.equal(near, brute)
    distances = torch.cdist(z_e.detach(), codes.detach().expand(5, -1, -1))
    assert torch.equal(indices, greedy_distinct_nearest(distances))  # the shared top-k picks as a full search
    assert torch.equal(mapper.search(z_e)[0], indices)
    weights = mapper.relaxed(z_e, near, temperature=0.1)
    torch.testing.assert_close(weights.sum(-1), torch.ones(5, 3))
    # cosine lookup: the soft assignment is softmax(cosine / temperature) over the neighbours
    cos = F.normalize(z_e, dim=-1).unsqueeze(2).mul(F.normalize(codes[near], dim=-1)).sum(-1)
    torch.testing.assert_close(weights, (cos / 0.1).softmax(-1))
    word_text = F.normalize(torch.randn(30, 7), dim=-1)
    out = relaxed_word_text(weights, near, indices, word_text)
    torch.testing.assert_close(out, F.normalize(word_text[indices].sum(1), dim=-1))  # value: the chosen words
    (out @ torch.randn(7)).sum().backward()
    assert mapper.concept_weight.grad.abs().sum() > 0 and mapper.codebook_map.weight.grad.abs().sum() > 0


def test_info_nce_by_group_contrasts_rows_within_their_group_only():
    from aligners.descriptor_text import info_nce

    queries, keys = F.normalize(torch.randn(7, 5), dim=-1), F.normalize(torch.randn(7, 5), dim=-1)
    groups = torch.tensor([0, 0, 0, 1, 1, 1, 1])
    grouped = info_nce(queries, keys, 0.1, groups)
    parts = [info_nce(queries[groups == g], keys[groups == g], 0.1) * int((groups == g).sum()) for g in (0, 1)]
    torch.testing.assert_close(grouped, sum(parts) / 7)
    torch.testing.assert_close(info_nce(queries, keys, 0.1, torch.zeros(7, dtype=torch.long)), info_nce(queries, keys, 0.1))


def test_word_usage_entropy_is_one_for_even_use_and_zero_for_one_word():
    from aligners.descriptor_text import word_usage_entropy

    # 4 rows x 2 slots x 3 neighbours over a vocabulary of 24: every word once, equally weighted
    even = torch.full((4, 2, 3), 1 / 3, requires_grad=True)
    torch.testing.assert_close(word_usage_entropy(even, torch.arange(24).view(4, 2, 3), 24), torch.tensor(1.0))
    one = torch.zeros(4, 2, 3)
    one[..., 0] = 1.0
    assert word_usage_entropy(one, torch.zeros(4, 2, 3, dtype=torch.long), 24).abs() < 1e-6
    peaked = torch.tensor([[[2.0, 0.0, 0.0]]]).repeat(4, 2, 1).requires_grad_()
    word_usage_entropy(peaked.softmax(-1), torch.arange(24).view(4, 2, 3), 24).backward()
    assert peaked.grad[..., 0].lt(0).all()  # more entropy: less weight on each slot's favourite


def test_standardised_concepts_are_centred_by_running_statistics_in_training_only():
    torch.manual_seed(0)
    mapper = VQDescriptorMapper(12, torch.randn(30, 10), [f"w{i}" for i in range(30)], num_words=3, word_dim=8,
                                dropout=0.0, lookup="euclidean", standardize=True, momentum=0.5)
    x = torch.randn(64, 12) + 3.0
    before = mapper.concept_mean.clone()
    mapper.encode(x, update=False)  # a second reading of the same entities changes nothing
    assert torch.equal(mapper.concept_mean, before)
    for _ in range(30):
        mapper.encode(x)
    mapper.eval()
    frozen = mapper.concept_mean.clone()
    z = mapper.encode(x)
    assert torch.equal(mapper.concept_mean, frozen)  # evaluation never updates them
    # every slot and dimension centred and scaled over these entities (the euclidean lookup keeps the scale)
    torch.testing.assert_close(z.mean(0), torch.zeros(3, 8), atol=1e-3, rtol=0)
    torch.testing.assert_close(z.var(0, unbiased=False), torch.ones(3, 8), atol=1e-2, rtol=0)
    assert "concept_mean" in mapper.state_dict()  # saved with the weights: the read-out depends on them


def test_balancing_penalty_moves_entities_off_an_over_used_word():
    torch.manual_seed(0)
    mapper = VQDescriptorMapper(12, torch.randn(30, 10), [f"w{i}" for i in range(30)], num_words=1, word_dim=8,
                                dropout=0.0, balance=True).eval()
    x = 0.3 * torch.randn(40, 12) + torch.randn(12)  # similar entities: most share one nearest word
    first = mapper.nearest(mapper.encode(x))[:, 0]
    hub = int(first.mode().values)
    share = float((first == hub).float().mean())
    mapper.balance(first.unsqueeze(1), cap=share - 0.01, rate=0.05)  # over the cap: penalised
    assert mapper.word_bias[hub] == pytest.approx(0.05) and mapper.word_bias.sum() == pytest.approx(0.05)
    for _ in range(200):
        picks = mapper.nearest(mapper.encode(x))
        mapper.balance(picks, cap=0.1, rate=0.01)
    final = mapper.nearest(mapper.encode(x))[:, 0]
    assert share > 0.5 and float((final == final.mode().values).float().mean()) <= 0.25  # no word holds much more than the cap
    # a word under the cap sees its penalty fall back to zero, never below
    mapper.balance(torch.full((40, 1), hub), cap=1.0, rate=1.0)
    assert mapper.word_bias.min() == 0 and "word_bias" in mapper.state_dict()


def test_calibration_keeps_every_word_under_the_item_cap_and_matches_the_read_out():
    torch.manual_seed(0)
    mapper = VQDescriptorMapper(12, torch.randn(60, 10), [f"w{i}" for i in range(60)], num_words=3, word_dim=8,
                                dropout=0.0, balance=True).eval()
    x = 0.3 * torch.randn(200, 12) + torch.randn(12)  # similar entities: a few words are everyone's
    z = mapper.encode(x)
    before = mapper.nearest(z)
    top_before = torch.bincount(before.flatten()).max().item() / len(x)
    rounds, picks = mapper.calibrate(z, cap=0.2, candidates=60)
    top_after = torch.bincount(picks.flatten()).max().item() / len(x)
    assert top_before > 0.5 and rounds > 0 and top_after <= 0.2
    assert torch.equal(mapper.nearest(z), picks)  # the stored penalties give the same words at read-out
    assert (mapper.word_bias >= 0).all() and mapper.word_bias[before.flatten().unique()].max() > 0
    # penalties gathered before (in training) do not carry over: a word pushed out by them comes back
    calibrated = mapper.word_bias.clone()
    mapper.word_bias[before[:, 0].mode().values] += 5.0
    assert torch.equal(mapper.calibrate(z, cap=0.2, candidates=60)[1], picks) and torch.equal(mapper.word_bias, calibrated)
    with pytest.raises(ValueError, match="cosine"):
        _mapper(lookup="euclidean").calibrate(z, cap=0.2)
