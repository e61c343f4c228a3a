"""FACE descriptors as a reader sees them: readability figures and the part-of-speech filter (issue 15, part)."""

from __future__ import annotations

import pytest
import torch

from aligners.vq_descriptor import is_noun_or_adjective, word_vocabulary
from lightning_modules.face_outputs import readability


def test_readability_figures_on_a_hand_made_table():
    words = [
        ["red", "lipstick", "lobbying"],
        ["blue", "shampoo", "lobbying"],
        ["soft", "brush", "lobbying"],
        ["nail", "polish", "gloss"],
    ]
    titles = ["Red Lipstick", "Blue Shampoo for Hair", "Big Brush", "Nail Polish, Pink"]
    out = readability(words, titles, common_share=0.3)
    assert out["distinct_words"] == 10
    assert out["top_word_item_share"] == 0.75  # "lobbying" is in 3 of 4 items
    assert out["common_word_slot_share"] == pytest.approx(3 / 12)  # only "lobbying" is in more than 30% of items
    # red, lipstick | blue, shampoo | brush | nail, polish: 7 of 12 slots repeat the item's own title
    assert out["title_word_share"] == pytest.approx(7 / 12)
    with pytest.raises(ValueError, match="one title per"):
        readability(words, titles[:2])


def test_part_of_speech_filter_keeps_nouns_and_adjectives():
    for word in ("shampoo", "brush", "brushes", "red", "soft", "gentle", "psychotic", "internship"):
        assert is_noun_or_adjective(word), word
    for word in ("lobbying", "transferring", "moisturizing", "quickly", "the", "and", "with"):
        assert not is_noun_or_adjective(word), word


def test_word_vocabulary_applies_the_filter(tiny_word_llm_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_word_llm_dir)
    _, every = word_vocabulary(tokenizer, size=50000)
    _, kept = word_vocabulary(tokenizer, size=50000, parts_of_speech="noun_adj")
    assert "the" in every and "the" not in kept
    assert {"red", "shampoo", "soft", "brush"} <= set(kept) < set(every)
    with pytest.raises(ValueError, match="parts_of_speech"):
        word_vocabulary(tokenizer, parts_of_speech="verbs")


def _naive_loglik(model, prompt: list[int], cont: list[int]) -> float:
    import torch

    ids = torch.tensor([prompt + cont])
    with torch.no_grad():
        logp = model(ids).logits[0, :-1].float().log_softmax(-1)
    return float(sum(logp[len(prompt) - 1 + j, t] for j, t in enumerate(cont)))


def test_judge_is_the_pmi_of_each_title_and_caches_the_priors(tiny_llm_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from aligners.judge import WITH_WORDS, PMIJudge

    model = AutoModelForCausalLM.from_pretrained(tiny_llm_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_llm_dir)
    titles = ["Red Lipstick", "Blue Shampoo", "Soap", "Nail Polish Pink"]
    judge = PMIJudge(model, tokenizer, titles)
    words = [["red", "lipstick"], ["soap"]]
    candidates = torch.tensor([[0, 1, 2], [3, 2, 1]])
    scores = judge.rank(words, candidates)
    assert sorted(judge.prior) == [0, 1, 2, 3]  # one prior per distinct title, computed once
    for b, row in enumerate(candidates.tolist()):
        prompt = tokenizer(WITH_WORDS.format(words=", ".join(words[b]))).input_ids
        for c, title in enumerate(row):
            cont = tokenizer(" " + titles[title], add_special_tokens=False).input_ids
            expected = _naive_loglik(model, prompt, cont) - _naive_loglik(model, judge.without_ids, cont)
            assert scores[b, c].item() == pytest.approx(expected, abs=1e-3)
    judge.prior[2] = 100.0  # a cached prior is reused, not recomputed
    assert judge.rank(words, candidates)[0, 2] < scores[0, 2] - 50
    short = PMIJudge(model, tokenizer, titles, max_title_tokens=1)  # only each title's first token is judged
    assert [len(t) for t in short.titles] == [1, 1, 1, 1] and [t[0] for t in short.titles] == [t[0] for t in judge.titles]


@pytest.mark.slow
def test_judge_ranks_planted_cases_with_smollm2():
    """SmolLM2 (offline package), given words that name the target's title, picks it among 10
    (8 of these 10 cases when this was written; chance is 1)."""
    import torch

    from aligners.judge import PMIJudge
    from aligners.llm import load_llm
    from lightning_modules.config import compose

    llm, tokenizer = load_llm(compose(["llm=smollm2", "llm.dtype=float32"]).llm)
    titles = [
        "Maybelline Matte Red Lipstick", "Head & Shoulders Dandruff Shampoo", "OPI Pink Nail Polish",
        "Neutrogena Oil-Free Face Moisturizer", "Revlon Volumizing Black Mascara", "Dove Sensitive Skin Bar Soap",
        "Conair Round Hair Brush", "Coppertone Sunscreen Lotion SPF 50", "Calvin Klein Eternity Perfume",
        "Gillette Fusion Razor Blades",
    ]
    planted = {
        0: ["matte", "red", "lipstick"], 1: ["dandruff", "shampoo"], 2: ["nail", "polish", "pink"], 9: ["razor", "blades"],
        4: ["mascara", "black"], 7: ["sunscreen", "lotion"], 5: ["soap", "skin"], 8: ["perfume"], 6: ["hair", "brush"],
        3: ["face", "moisturizer"],
    }
    judge = PMIJudge(llm, tokenizer, titles)
    scores = judge.rank(list(planted.values()), torch.arange(10).expand(len(planted), 10))
    right = sum(int(pick) == target for pick, target in zip(scores.argmax(1), planted))
    assert right >= 7, scores.argmax(1)


def test_slot_info_nce_scores_every_word_on_its_own():
    import math

    import torch

    from aligners.descriptor_text import slot_info_nce

    word_text = torch.eye(4)  # words 0-2 each name one entity's text; word 3 is no one's (a hub)
    targets = torch.eye(4)[:3]
    near = torch.tensor([[[0, 3]], [[1, 3]], [[2, 3]]])  # one slot, two candidate words each
    soft = torch.tensor([[[0.5, 0.5]]]).repeat(3, 1, 1).requires_grad_()
    own = slot_info_nce(soft, near, torch.tensor([[0], [1], [2]]), word_text, targets, temperature=0.1)
    hub = slot_info_nce(soft, near, torch.tensor([[3], [3], [3]]), word_text, targets, temperature=0.1)
    assert hub.item() == pytest.approx(math.log(3))  # the same word for everyone names no one
    assert own.item() < 0.01
    hub.backward()
    # descent raises each entity's own word; the hub is as near to every text, so it draws no gradient
    assert (soft.grad[..., 0] < 0).all() and (soft.grad[..., 1] == 0).all()
    # groups: a row competes with its own group only
    grouped = slot_info_nce(soft.detach(), near, torch.tensor([[3], [3], [3]]), word_text, targets, 0.1,
                            groups=torch.tensor([0, 0, 1]))
    assert grouped.item() == pytest.approx((2 * math.log(2) + 0) / 3)


def test_title_word_targets_weight_rare_title_words_and_skip_heldout_items():
    from lightning_modules.face_outputs import title_word_targets

    words = ["nail", "polish", "ounce", "hair", "mascara"]
    titles = [None, "Nail Polish, 0.5 Ounce", "Hair Oil 2 ounce", "Mascara 1 Ounce", "No listed word", "Nail art"]
    skip = torch.tensor([False, False, False, False, False, True])
    ids, weights = title_word_targets(titles, words, skip)
    assert ids.shape == weights.shape == (6, 3)
    assert weights[0].sum() == 0 and weights[4].sum() == 0 and weights[5].sum() == 0  # padding, no word, held out
    assert torch.allclose(weights[1:4].sum(1), torch.ones(3))
    row = dict(zip(ids[3].tolist(), weights[3].tolist()))
    assert {i for i, w in row.items() if w > 0} == {words.index("mascara"), words.index("ounce")}
    # "ounce" is in all three counted titles (IDF ~0), "mascara" in one: the rare word takes the weight
    assert row[words.index("mascara")] > 0.99
    # the held-out item's "nail" does not count in the frequencies: "nail" is in one of three titles, as "polish"
    first = dict(zip(ids[1].tolist(), weights[1].tolist()))
    assert first[words.index("nail")] == pytest.approx(first[words.index("polish")])


def test_title_word_coverage_is_low_when_a_slot_picks_each_title_word():
    from aligners.descriptor_text import title_word_coverage

    targets, weights = torch.tensor([[1, 3]]), torch.tensor([[0.5, 0.5]])

    def coverage(sims: torch.Tensor, w: torch.Tensor = weights) -> torch.Tensor:  # sims [1, n, 5]: every slot's cosines
        logits = sims / 0.05
        return title_word_coverage(logits[:, :, targets[0]], logits.logsumexp(-1), w)

    covered = torch.full((1, 3, 5), -1.0)
    covered[0, 0, 1] = covered[0, 1, 3] = 1.0  # slot 0 picks word 1, slot 1 word 3, slot 2 none of them
    missed = torch.full((1, 3, 5), -1.0)
    missed[0, :, 0] = 1.0  # every slot on word 0, which is not in the title
    low, high = coverage(covered), coverage(missed)
    assert low < 0.01 and high > 30
    # one slot per title word is enough: a third slot on a title word adds almost nothing
    both = covered.clone()
    both[0, 2, 1] = 1.0
    assert coverage(both) <= low
    sims = missed.clone().requires_grad_(True)
    coverage(sims).backward()
    assert (sims.grad[0, :, [1, 3]] < 0).all() and (sims.grad[0, :, 0] > 0).all()  # towards the title words, away from word 0
    assert coverage(covered, torch.zeros(1, 2)) == 0  # rows without a title word add nothing
