"""FACE: shared word vocabulary, descriptor prompts through the frozen text encoder, the gradient
bridge, the loss on synthetic data, and the ``face`` stage end to end (tiny offline models)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from aligners.descriptor_text import DescriptorBridge, DescriptorTextEncoder, shared_word_vocabulary
from aligners.vq_descriptor import greedy_distinct_nearest
from tests.conftest import WORDS, tiny_args

USER_PROMPT = "the user likes the following words:"
ITEM_PROMPT = "the product has the following words:"


def _greedy_over_all(distances: torch.Tensor) -> torch.Tensor:
    used = torch.zeros(distances.shape[0], distances.shape[2], dtype=torch.bool)
    picks = []
    for slot in range(distances.shape[1]):
        pick = distances[:, slot].masked_fill(used, float("inf")).argmin(-1)
        used[torch.arange(len(pick)), pick] = True
        picks.append(pick)
    return torch.stack(picks, 1)


def test_greedy_over_nearest_candidates_equals_greedy_over_the_whole_codebook():
    torch.manual_seed(0)
    # few distinct values: slots often want the same tokens, which is where the shortcut could differ
    distances = torch.randn(200, 6, 50).mul(1e3).round().div(1e3)
    base = torch.randn(200, 1, 50)
    distances = base + 0.05 * distances  # slots of one row agree on what is near
    assert torch.equal(greedy_distinct_nearest(distances), _greedy_over_all(distances))


def _sentence_model(path: Path):
    from aligners.text_encoder import TextEncoderConfig, load_text_encoder

    return load_text_encoder(TextEncoderConfig(name="tiny", name_or_path=str(path)))


def test_shared_vocabulary_words_are_whole_tokens_of_both_models(tiny_word_llm_dir, tiny_sentence_encoder_dir):
    from transformers import AutoTokenizer

    llm_tok = AutoTokenizer.from_pretrained(tiny_word_llm_dir)
    text_tok = _sentence_model(tiny_sentence_encoder_dir).model[0].tokenizer
    llm_ids, text_ids, words = shared_word_vocabulary(llm_tok, text_tok, size=20000)
    assert len(words) >= 20 and set(words) <= set(WORDS)
    assert [llm_tok.decode([i]).strip() for i in llm_ids] == words
    assert text_tok.convert_ids_to_tokens(text_ids) == words


def test_descriptor_prompt_reads_like_the_sentence_encoder_on_the_same_text(tiny_sentence_encoder_dir):
    encoder = _sentence_model(tiny_sentence_encoder_dir)
    model = encoder.model
    tok = model[0].tokenizer
    text = DescriptorTextEncoder(model, USER_PROMPT, ITEM_PROMPT, dtype="float32")
    rows = [["red", "soft", "hair"], ["blue", "nail", "oil"], ["pink", "lip", "gel"]]
    ids = torch.tensor([tok.convert_tokens_to_ids(r) for r in rows])
    embeds = text.model.get_input_embeddings().weight[ids]
    is_user = torch.tensor([True, False, True])
    got = text(embeds, is_user)
    sentences = [f"{USER_PROMPT if u else ITEM_PROMPT} {', '.join(r)}" for r, u in zip(rows, is_user.tolist())]
    expected = encoder.encode(sentences, batch_size=8)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_bridge_feeds_the_exact_word_and_passes_gradients_to_the_concepts():
    torch.manual_seed(0)
    llm_words, text_words = torch.randn(30, 12), torch.randn(30, 8)
    bridge = DescriptorBridge(llm_words, text_words)
    codebook_map = torch.nn.Linear(12, 6)
    indices = torch.randint(0, 30, (4, 3))
    quantized = torch.randn(4, 3, 6, requires_grad=True)
    out = bridge(quantized, indices, codebook_map)
    torch.testing.assert_close(out, text_words[indices])
    (out * torch.randn_like(out)).sum().backward()
    assert quantized.grad is not None and quantized.grad.abs().sum() > 0
    assert codebook_map.weight.grad is None  # the map is trained by the codebook loss only


def _face_args(tmp_path: Path, llm_dir: Path, st_dir: Path, *extra: str) -> list[str]:
    return tiny_args(
        tmp_path,
        "sasrec",
        f"llm.name_or_path={llm_dir}",
        "llm.name=tiny",
        "llm.gguf_file=''",
        "llm.dtype=float32",
        f"text_encoder.name_or_path={st_dir}",
        "text_encoder.name=tiny",
        "backbone.hidden_dim=16",
        *extra,
    )


def _face_stage(tmp_path: Path, llm_dir: Path, st_dir: Path, *extra: str) -> list[str]:
    return _face_args(
        tmp_path, llm_dir, st_dir, "stage=face", "stage.num_words=4", "stage.word_dim=16", "stage.entities_per_step=16",
        "stage.text_dtype=float32", *extra,
    )


@pytest.fixture
def pretrained(tmp_path, tiny_word_llm_dir, tiny_sentence_encoder_dir):
    from lightning_modules.run import main

    assert main(_face_args(tmp_path, tiny_word_llm_dir, tiny_sentence_encoder_dir, "stage=cf_pretrain")) == 0
    return tmp_path


def test_vocabulary_needs_one_text_encoder_token_only_for_the_official_alignment(pretrained, tiny_word_llm_dir, tmp_path_factory):
    """The word-level terms read each word's sentence embedding, so a word the text encoder splits
    ("shampoo", as MiniLM's WordPiece does) is a descriptor; the official alignment feeds the encoder
    each word's own input embedding, so there it must be one token of both."""
    from lightning_modules.config import compose
    from lightning_modules.face import build_face
    from tests.conftest import make_tiny_sentence_encoder

    spelling = make_tiny_sentence_encoder(tmp_path_factory.mktemp("st_spelling"), spelled=("shampoo",))
    vocabularies = {}
    for weight in (0.0, 0.1):
        cfg = compose(_face_stage(pretrained, tiny_word_llm_dir, spelling, f"stage.align_weight={weight}", "stage.judge_users=0"))
        _, module, _ = build_face(cfg)
        vocabularies[weight] = module.mapper.words
        assert (module.bridge is None) == (weight == 0)
        assert len(module.word_text) == len(module.mapper.words)
    assert "shampoo" in vocabularies[0.0] and "shampoo" not in vocabularies[0.1]
    # what the official alignment drops is exactly the words the encoder reads as more than one token
    tokenizer = _sentence_model(spelling).model[0].tokenizer
    dropped = set(vocabularies[0.0]) - set(vocabularies[0.1])
    assert set(vocabularies[0.1]) <= set(vocabularies[0.0])
    assert all(len(tokenizer(w, add_special_tokens=False).input_ids) > 1 for w in dropped)
    assert all(len(tokenizer(w, add_special_tokens=False).input_ids) == 1 for w in vocabularies[0.1])


def test_face_loss_decreases_on_synthetic_data(pretrained, tiny_word_llm_dir, tiny_sentence_encoder_dir):
    from lightning_modules.config import compose
    from lightning_modules.face import build_face

    cfg = compose(_face_stage(pretrained, tiny_word_llm_dir, tiny_sentence_encoder_dir, "stage.map_epochs=0", "stage.dropout=0.0",
                                   "stage.align_weight=0.1",  # the official alignment next to the word-level one
                                   "stage.encoder_entities_per_step=8",  # the text encoder reads 8 of the 16 users' triples
                                   "stage.word_slot_weight=1"))  # at the default 10 its floor (ln 48 per word, on 40 words) dominates
    datamodule, module, _ = build_face(cfg)
    assert module.aligning
    batch = next(iter(datamodule.train_dataloader()))
    optimizer = module.configure_optimizers()
    torch.manual_seed(0)
    losses = []
    for _ in range(100):
        loss = module.training_step(batch, 0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(module.last_face_loss)
    # the two InfoNCE terms keep a floor near ln(48) on one fixed batch of 48 entities
    assert sum(losses[-5:]) / 5 < 0.85 * sum(losses[:5]) / 5, losses[::10]


def test_face_stage_writes_descriptors_and_metrics(pretrained, tiny_word_llm_dir, tiny_sentence_encoder_dir, capsys):
    from lightning_modules.run import main

    assert main(_face_stage(pretrained, tiny_word_llm_dir, tiny_sentence_encoder_dir, "stage.map_epochs=1")) == 0
    run_dir = pretrained / "runs" / "synthetic" / "face" / "sasrec" / "tiny"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    # the reference backbone is the cf_pretrain run as loaded: same users, same scores, same figures
    cf = json.loads((pretrained / "runs" / "synthetic" / "cf_pretrain" / "sasrec" / "metrics.json").read_text())
    for key in ("full/ndcg@10", "ndcg@10", "hit@1"):
        assert metrics[f"test/backbone/{key}"] == pytest.approx(cf[f"test/{key}"]), key
    assert metrics["test/full/ndcg@10"] is not None and metrics["test/interpretability/acc@1"] is not None
    # seen / held-out targets, the probe, the judge and its controls, the continued-training control:
    # every figure with its 95% interval, on the same rows as the figure
    for name in ("interpretability", "interpretability_heldout", "interpretability_probe_heldout", "interpretability_random",
                 "interpretability_items", "interpretability_heldout_items", "judge", "judge_heldout", "judge_random",
                 "judge_ceiling", "diff/judge_random", "diff/interpretability_probe_heldout"):
        key = f"test/{name}/acc@1"
        assert metrics[f"{key}_ci95_low"] <= metrics[key] <= metrics[f"{key}_ci95_high"], key
    assert metrics["num_heldout_items"] == round(0.15 * metrics["num_items"])
    assert 0 < metrics["num_interpretability_heldout_users"] < metrics["num_interpretability_users"]
    assert metrics["num_judge_heldout_users"] == min(500, metrics["num_interpretability_heldout_users"])
    for key in ("test/control/full/ndcg@10", "test/control/hit@1", "best_val/interpretability/acc@1"):
        assert 0 <= metrics[key] <= 1, key
    # full-ranking NDCG@10 against the backbone and the control, paired over the same test users
    for name in ("backbone", "control"):
        diff, ratio = f"test/diff/{name}/full/ndcg@10", f"test/ratio/{name}/full/ndcg@10"
        assert metrics[diff] == pytest.approx(metrics["test/full/ndcg@10"] - metrics[f"test/{name}/full/ndcg@10"], abs=1e-6)
        assert metrics[ratio] == pytest.approx(metrics["test/full/ndcg@10"] / metrics[f"test/{name}/full/ndcg@10"], rel=1e-5)
        for key in (diff, ratio, f"test/{name}/full/ndcg@10", "test/full/ndcg@10"):
            assert metrics[f"{key}_ci95_low"] <= metrics[key] <= metrics[f"{key}_ci95_high"], key
    # the hub-word read-outs re-read the tested mapper: its own read-out gives the validation figure that chose it
    from benchmarks.face_readout import main as readout

    readout([str(run_dir), "--judge", "4"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    judged = rows.pop()  # the judge on validation targets: a figure to tune on that reads no test user
    assert [r["readout"] for r in rows][:2] == ["nearest", "csls"] and len(rows) == 6
    assert judged["judge_rows"] == 4 and 0 < judged["judge_heldout_rows"] <= 4
    assert all(0 <= judged[f"val/{name}/acc@1"] <= 1 for name in ("judge", "judge_heldout", "judge_random", "judge_ceiling"))
    assert rows[0]["val/interpretability/acc@1"] == pytest.approx(metrics["best_val/interpretability/acc@1"])
    assert rows[0]["top_word_item_share"] == pytest.approx(metrics["test/descriptors/top_word_item_share"])
    # random words sit at chance, 1 in 10 candidates (4 standard errors)
    n, p = metrics["num_interpretability_users"], 0.1
    assert abs(metrics["test/interpretability_random/acc@1"] - p) < 4 * (p * (1 - p) / n) ** 0.5
    with open(run_dir / "descriptors.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    items = [r for r in rows if r["entity_type"] == "item"]
    users = [r for r in rows if r["entity_type"] == "user"]
    assert len(items) == metrics["num_items"] and len(users) == metrics["num_users"]
    assert items[0]["title"] and items[0]["raw_id"]
    assert sum(int(r["heldout"]) for r in items) == metrics["num_heldout_items"]
    from transformers import AutoTokenizer

    from aligners.vq_descriptor import word_vocabulary

    vocabulary = set(word_vocabulary(AutoTokenizer.from_pretrained(tiny_word_llm_dir), 20000, parts_of_speech="noun_adj")[1])
    assert len(vocabulary) == metrics["vocabulary_size"]
    for row in rows:
        words = row["words"].split()
        assert len(words) == 4 == len(set(words)) and set(words) <= vocabulary
    # a run trained over another vocabulary does not load silently
    from lightning_modules.inference import load_run

    weights = torch.load(run_dir / "weights.pt", weights_only=True)
    assert weights["words"] == load_run(run_dir).module.mapper.words
    swapped = dict(weights, words=weights["words"][::-1])  # same size, other order: the indices name other words
    torch.save(swapped, run_dir / "weights.pt")
    with pytest.raises(ValueError, match="word 0 is"):
        load_run(run_dir)
    older = {k: v for k, v in weights.items() if k != "words"}  # a run saved before the words were
    older["mapper"] = dict(weights["mapper"], word_bias=weights["mapper"]["word_bias"][:-1])
    torch.save(older, run_dir / "weights.pt")
    with pytest.raises(ValueError, match="descriptor words"):
        load_run(run_dir)
