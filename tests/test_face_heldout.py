"""FACE on items held out from text (issue 15): the split, no text-loss gradient into held-out items,
the ridge probe, and the continued-training control."""

from __future__ import annotations

import pytest
import torch

from tests.test_face import _face_stage, pretrained  # noqa: F401  (the fixture)


def test_heldout_items_are_seeded_and_stratified_by_popularity():
    from lightning_modules.face_outputs import heldout_items

    # distinct counts in shuffled order, so the popularity bands are unambiguous; item 0 is padding
    counts = torch.cat([torch.zeros(1, dtype=torch.long), torch.randperm(1000, generator=torch.Generator().manual_seed(0))])
    held = heldout_items(counts, 0.2, seed=3)
    assert not held[0] and int(held.sum()) == 200
    assert torch.equal(held, heldout_items(counts, 0.2, seed=3)) and not torch.equal(held, heldout_items(counts, 0.2, seed=4))
    order = torch.argsort(counts[1:], stable=True) + 1
    for band in order.chunk(10):  # every popularity band gives its share
        assert int(held[band].sum()) == 20
    assert not heldout_items(counts, 0.0, seed=3).any()
    with pytest.raises(ValueError, match="text_heldout_fraction"):
        heldout_items(counts, 1.0, seed=3)


def test_user_texts_leave_out_heldout_titles(tiny_datamodule):
    from lightning_modules.face_outputs import user_texts

    data = tiny_datamodule.data
    data.titles = [""] + [f"title{i}" for i in range(1, data.num_items + 1)]
    hidden = torch.zeros(data.num_items + 1, dtype=torch.bool)
    hidden[1::2] = True  # every odd item
    texts = user_texts(data, 20, hidden)
    assert all(f"title{i};" not in t + ";" for t in texts for i in range(1, data.num_items + 1, 2))
    assert any("title2" in t for t in user_texts(data, 20))


def test_ridge_probe_is_fitted_on_the_seen_rows_only():
    from lightning_modules.face_outputs import nearest_words, ridge_probe

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(300, 8, generator=gen)
    w, b = torch.randn(8, 5, generator=gen), torch.randn(5, generator=gen)
    y = x @ w + b
    fit = torch.arange(300) < 150
    corrupted = y.clone()
    corrupted[~fit] = 1e3  # the unseen rows' targets must not be read
    predicted, alpha = ridge_probe(x, corrupted, fit)
    assert alpha == 0.1  # noiseless: the least penalty is best by cross-validation
    assert torch.allclose(predicted[~fit], y[~fit], atol=0.05)
    words = nearest_words(torch.tensor([[1.0, 0.0], [0.0, -1.0]]), torch.tensor([[0.9, 0.1], [0.0, 1.0], [0.1, -1.0]]), ["a", "b", "c"], 2)
    assert words == [["a", "c"], ["c", "a"]]


def _embedding_table(backbone) -> torch.nn.Parameter:
    return next(m.weight for m in backbone.modules() if isinstance(m, torch.nn.Embedding) and m.num_embeddings == backbone.num_items + 1)


def test_heldout_items_get_no_gradient_from_any_text_loss(pretrained, tiny_word_llm_dir, tiny_sentence_encoder_dir):  # noqa: F811
    from lightning_modules.config import compose
    from lightning_modules.face import build_face

    def text_gradient(fraction: float, names=("align", "word_align", "word_diversity", "word_title")):
        cfg = compose(_face_stage(pretrained, tiny_word_llm_dir, tiny_sentence_encoder_dir, "stage.map_epochs=0",
                                  f"stage.text_heldout_fraction={fraction}", "stage.align_weight=0.1",
                                  "stage.word_title_weight=1", "stage.encoder_entities_per_step=8", "stage.judge_users=0"))
        datamodule, module, _ = build_face(cfg)
        batch = next(iter(datamodule.train_dataloader()))
        torch.manual_seed(0)
        terms = module.face_terms(batch)
        assert set(names) <= terms.keys()
        sum(-terms[n] if n == "word_diversity" else terms[n] for n in names).backward()
        items = torch.cat([batch.pos_items[:16, -1], module._negatives(16)]).unique()
        return module, items, _embedding_table(module.backbone).grad.abs().sum(1)

    for names in (("align", "word_align", "word_diversity", "word_title"), ("word_title",)):
        module, items, grad = text_gradient(0.5, names)
        held_in_step, kept = items[module.heldout[items]], items[~module.heldout[items]]
        if names == ("word_title",):  # that term reaches only items whose titles have a descriptor word
            kept = kept[module.title_weights[kept].sum(1) > 0]
        assert len(held_in_step) and len(kept)
        assert torch.all(grad[module.heldout] == 0), (names, grad[held_in_step])
        assert torch.all(grad[kept] > 0), names  # the kept items do learn from text
        # the control that could fail: with nothing held out, the same items get text gradients
        module_all, _, grad_all = text_gradient(0.0, names)
        if names == ("word_title",):
            held_in_step = held_in_step[module_all.title_weights[held_in_step].sum(1) > 0]
        assert len(held_in_step) and torch.all(grad_all[held_in_step] > 0), names


def test_control_backbone_learns_from_its_own_loss_alone(pretrained, tiny_word_llm_dir, tiny_sentence_encoder_dir):  # noqa: F811
    from lightning_modules.config import compose
    from lightning_modules.face import build_face

    cfg = compose(_face_stage(pretrained, tiny_word_llm_dir, tiny_sentence_encoder_dir, "stage.map_epochs=0", "stage.judge_users=0"))
    datamodule, module, _ = build_face(cfg)
    batch = next(iter(datamodule.train_dataloader()))
    module.control.eval()  # no dropout: the two passes below must see the same function
    module.training_step(batch, 0).backward()
    got = [p.grad.clone() for p in module.control.parameters()]
    module.zero_grad()
    module.backbone_loss(batch, module.control)[0].backward()
    for a, p in zip(got, module.control.parameters()):
        assert torch.allclose(a, p.grad, atol=1e-6)
    assert module.test_ranking_sets == ("backbone", "control")
    # the control starts as the backbone that FACE trains: the cf_pretrain weights
    assert all(torch.equal(a, b) for a, b in zip(module.control.state_dict().values(), module.reference.state_dict().values()))


def test_face_pilot_tunes_on_validation_users_only(pretrained, tiny_word_llm_dir, tiny_sentence_encoder_dir, monkeypatch):  # noqa: F811
    """benchmarks/face_pilot.py (how the FACE settings were chosen) steps the stage's own module and scores
    validation users' validation targets, the probe on the same rows and every item's readability; it never
    builds the test loader."""
    import io

    from benchmarks import face_pilot
    from datamodules.datamodule import SeqDataModule

    def no_test(self):
        raise AssertionError("the pilot read test users")

    setup = SeqDataModule.setup

    class Unread:  # the test targets: present, but reading them fails
        def __getitem__(self, index):
            raise AssertionError("the pilot read test targets")

    def setup_without_test_targets(self, stage=None):  # the judge at the end must not read them either
        setup(self, stage)
        self.data.test_candidates = Unread()

    monkeypatch.setattr(SeqDataModule, "test_dataloader", no_test)
    monkeypatch.setattr(SeqDataModule, "setup", setup_without_test_targets)
    out = io.StringIO()
    overrides = _face_stage(pretrained, tiny_word_llm_dir, tiny_sentence_encoder_dir, "stage.val_interpretability_users=30")
    records = face_pilot.pilot(overrides, steps=10, every=5, control=True, judge=3, out=out)
    judged = records[-1]  # the stage's LLM judge on validation targets, with its random-word control
    assert judged["judge_rows"] == 3 and 0 < judged["judge_heldout_rows"] <= 3
    for name in ("judge", "judge_heldout", "judge_random", "judge_ceiling"):
        low, high = judged[f"val/{name}/acc@1_ci95"]
        assert 0 <= low <= judged[f"val/{name}/acc@1"] <= high <= 1, name
    assert records[0]["validation_users"] == 30 and 0 <= records[0]["probe"] <= 1
    evaluations = [r for r in records if "interpretability" in r]
    assert [r["step"] for r in evaluations] == [5, 10]
    for r in evaluations:
        assert 0 <= r["interpretability"] <= 1 and 0 < r["top_word_item_share"] <= 1
        assert r["ndcg"] > 0 and r["backbone_ndcg"] > 0 and r["control_ndcg"] > 0
    assert len(out.getvalue().splitlines()) == len(records)


def test_title_word_term_runs_without_the_word_text_terms(pretrained, tiny_word_llm_dir, tiny_sentence_encoder_dir):  # noqa: F811
    """The title-word term needs no word text embeddings: alone, it is the only text term of the step."""
    from lightning_modules.config import compose
    from lightning_modules.face import build_face

    cfg = compose(_face_stage(pretrained, tiny_word_llm_dir, tiny_sentence_encoder_dir, "stage.map_epochs=0",
                              "stage.word_align_weight=0", "stage.word_slot_weight=0", "stage.word_diversity_weight=0",
                              "stage.judge_users=0"))
    datamodule, module, _ = build_face(cfg)
    assert module.word_text is None
    terms = module.face_terms(next(iter(datamodule.train_dataloader())))
    assert set(terms) == {"vq", "recons", "word_title"} and torch.isfinite(terms["word_title"]) and terms["word_title"] > 0
