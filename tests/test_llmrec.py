"""A-LLMRec stages on a tiny random LLM (byte-level tokenizer) and the hashing text encoder: all offline."""

from __future__ import annotations

import json

import pytest
import torch

from aligners.llm_ops import greedy_generate, pad, prompt_forward, score_continuations
from aligners.llm_projector import splice
from aligners.prompt import CANDIDATE_TOKEN, HISTORY_TOKEN, USER_TOKEN, PromptBuilder, PromptConfig, parse_answer
from lightning_modules.align_stage1 import build_align_stage1
from lightning_modules.align_stage2 import build_align_stage2
from lightning_modules.config import compose
from lightning_modules.run import run
from lightning_modules.stage2_eval import prompt_orders
from tests.conftest import llm_args


@pytest.fixture(scope="module")
def tiny_lm(tiny_llm_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llm_dir, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(tiny_llm_dir)


TITLES = ["<pad>", "Red Lipstick", "Blue &amp; Green Shampoo", 'Big "Bold" Brush', "Soap", "Face Cream", "Nail Polish"]


def test_prompt_places_each_embedding_after_its_title(tiny_lm):
    _, tokenizer = tiny_lm
    builder = PromptBuilder(tokenizer, PromptConfig(num_history=2), TITLES)
    text = builder.text([1, 2, 3], [4, 5, 6])
    assert text.startswith(USER_TOKEN)
    # Only the last num_history items are shown; titles are cleaned (HTML, double quotes).
    assert "Red Lipstick" not in text
    assert f'"Blue & Green Shampoo"{HISTORY_TOKEN},"Big \'Bold\' Brush"{HISTORY_TOKEN}' in text
    assert f'"Soap"{CANDIDATE_TOKEN},"Face Cream"{CANDIDATE_TOKEN},"Nail Polish"{CANDIDATE_TOKEN}' in text
    ids = builder.prompts([[1, 2, 3]], [[4, 5, 6]])[0]
    cand = builder.placeholder_ids[CANDIDATE_TOKEN]
    positions = [i for i, t in enumerate(ids) if t == cand]
    assert len(positions) == 3
    for pos, title in zip(positions, ("Soap", "Face Cream", "Nail Polish")):
        before = tokenizer.decode(ids[:pos])
        assert before.endswith(f'"{title}"'), before[-30:]
    plain = builder.text([1, 2, 3], [4, 5, 6], with_embeddings=False)
    assert not any(t in plain for t in (USER_TOKEN, HISTORY_TOKEN, CANDIDATE_TOKEN))
    assert plain.startswith("This user has bought")
    answer = builder.answers([4])[0]
    assert answer[-1] == tokenizer.eos_token_id and tokenizer.decode(answer[:-1]) == ' "Soap"'


def test_prompt_item_format_can_put_the_embedding_first(tiny_lm):
    _, tokenizer = tiny_lm
    builder = PromptBuilder(tokenizer, PromptConfig(item='{emb}"{title}"'), TITLES)
    assert f'{CANDIDATE_TOKEN}"Soap",{CANDIDATE_TOKEN}"Face Cream"' in builder.text([1], [4, 5])
    with pytest.raises(ValueError, match="emb"):
        PromptConfig(item='"{title}"')


def test_titles_cut_to_max_tokens(tiny_lm):
    _, tokenizer = tiny_lm
    builder = PromptBuilder(tokenizer, PromptConfig(max_title_tokens=4), TITLES)
    assert builder.titles[5] == "Face"  # byte-level: 4 tokens = 4 characters
    assert builder.titles[4] == "Soap"


def test_candidate_order_is_seeded_per_user():
    users = torch.tensor([3, 4, 3])
    a, b = prompt_orders(users, 20, salt=7), prompt_orders(users, 20, salt=7)
    assert torch.equal(a, b)
    assert torch.equal(a[0], a[2]) and not torch.equal(a[0], a[1])
    assert sorted(a[1].tolist()) == list(range(20))
    assert not torch.equal(prompt_orders(users, 20, salt=8)[0], a[0])


def test_parse_answer():
    assert parse_answer(' "Face  Cream" is great') == "face cream"
    assert parse_answer(' "Face Cream') == "face cream"
    assert parse_answer("Face Cream.") == "face cream."


def test_splice_replaces_placeholders_in_order():
    ids = torch.tensor([[5, 9, 1, 9, 2], [9, 3, 4, 5, 6]])
    embeds = torch.zeros(2, 5, 3)
    vectors = torch.arange(12.0).view(2, 2, 3)
    out = splice(embeds, ids, 9, vectors, torch.tensor([2, 1]))
    assert torch.equal(out[0, 1], vectors[0, 0]) and torch.equal(out[0, 3], vectors[0, 1])
    assert torch.equal(out[1, 0], vectors[1, 0])
    assert out[0, 0].abs().sum() == 0 and embeds.abs().sum() == 0  # the input is not modified
    with pytest.raises(ValueError, match="placeholder"):
        splice(embeds, ids, 9, vectors, torch.tensor([1, 1]))


def _naive_logprob(model, prompt: list[int], cont: list[int]) -> float:
    ids = torch.tensor([prompt + cont])
    logp = model(input_ids=ids).logits[0].log_softmax(-1)
    return sum(float(logp[len(prompt) + j - 1, t]) for j, t in enumerate(cont))


def test_score_continuations_matches_full_forward(tiny_lm):
    """Cache + block-diagonal mask give each candidate the log-likelihood of a plain forward pass."""
    model, _ = tiny_lm
    prompts = [[5, 6, 7, 8, 9, 10], [11, 12, 13]]  # different lengths: left padding is exercised
    conts = [[[20, 21, 22], [23], [24, 25]], [[30], [31, 32, 33, 34], [35, 36]]]
    ids, mask = pad(prompts, 0, left=True)
    with torch.no_grad():
        next_logits, cache = prompt_forward(model, model.get_input_embeddings()(ids), mask)
        summed = score_continuations(model, cache, mask, next_logits, conts, 0, reduction="sum")
        mean = score_continuations(model, cache, mask, next_logits, conts, 0, reduction="mean")
        first2 = score_continuations(model, cache, mask, next_logits, conts, 0, reduction="first_k", k=2)
        expected = torch.tensor([[_naive_logprob(model, p, c) for c in row] for p, row in zip(prompts, conts)])
        expected2 = torch.tensor([[_naive_logprob(model, p, c[:2]) / len(c[:2]) for c in row] for p, row in zip(prompts, conts)])
    torch.testing.assert_close(summed, expected, atol=1e-4, rtol=1e-4)
    lengths = torch.tensor([[len(c) for c in row] for row in conts], dtype=torch.float)
    torch.testing.assert_close(mean, expected / lengths, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(first2, expected2, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="score reduction"):
        score_continuations(model, cache, mask, next_logits, conts, 0, reduction="max")


def test_answer_vectors_are_inputs_not_scored_tokens(tiny_lm):
    """An answer's placeholder takes its candidate's vector as input and is not scored: each candidate
    scores as a plain forward pass over prompt + vector + answer tokens, and first_k counts answer tokens."""
    model, _ = tiny_lm
    torch.manual_seed(0)
    slot = 10_000  # a placeholder id outside the vocabulary
    prompts = [[5, 6, 7, 8, 9, 10], [11, 12, 13]]
    conts = [[[slot, 20, 21, 22], [slot, 23], [slot, 24, 25]], [[slot, 30], [slot, 31, 32, 33], [slot, 35, 36]]]
    vectors = torch.randn(2, 3, model.config.hidden_size)
    ids, mask = pad(prompts, 0, left=True)
    embed = model.get_input_embeddings()

    def naive(row: int, c: int, k: int) -> float:
        tokens = conts[row][c][1:1 + k]
        inputs = torch.cat([embed(torch.tensor(prompts[row])), vectors[row, c : c + 1], embed(torch.tensor(tokens))])
        logp = model(inputs_embeds=inputs.unsqueeze(0)).logits[0].log_softmax(-1)
        start = len(prompts[row])  # the vector's position predicts the first answer token
        return sum(float(logp[start + j, t]) for j, t in enumerate(tokens)) / len(tokens)

    with torch.no_grad():
        next_logits, cache = prompt_forward(model, embed(ids), mask)
        mean = score_continuations(model, cache, mask, next_logits, conts, 0, "mean", vectors=vectors, placeholder=slot)
        first2 = score_continuations(model, cache, mask, next_logits, conts, 0, "first_k", 2, vectors=vectors, placeholder=slot)
        expected = torch.tensor([[naive(r, c, 10) for c in range(3)] for r in range(2)])
        expected2 = torch.tensor([[naive(r, c, 2) for c in range(3)] for r in range(2)])
        moved = score_continuations(model, cache, mask, next_logits, conts, 0, "mean", vectors=vectors.flip(1), placeholder=slot)
    torch.testing.assert_close(mean, expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(first2, expected2, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(moved, mean)  # the vector is read: another candidate's vector changes the score
    with pytest.raises(ValueError, match="no vectors"):
        score_continuations(model, cache, mask, next_logits, conts, 0, "mean", placeholder=slot)


def test_answer_template_with_an_embedding(tiny_lm):
    _, tokenizer = tiny_lm
    builder = PromptBuilder(tokenizer, PromptConfig(answer='{emb} "{title}"'), TITLES)
    assert builder.answer_has_embedding
    cand = builder.placeholder_ids[CANDIDATE_TOKEN]
    scored = builder.answers([4], with_embeddings=True)[0]
    assert scored[0] == cand and tokenizer.decode(scored[1:-1]) == ' "Soap"'
    assert builder.answers([4])[0] == scored[1:]  # generation's target: the paper's answer, no vector
    assert builder.answers([4])[0] == PromptBuilder(tokenizer, PromptConfig(), TITLES).answers([4])[0]


def test_greedy_generate_matches_stepwise_argmax(tiny_lm):
    model, _ = tiny_lm
    prompts = [[5, 6, 7, 8, 9, 10], [11, 12, 13]]
    ids, mask = pad(prompts, 0, left=True)
    with torch.no_grad():
        next_logits, cache = prompt_forward(model, model.get_input_embeddings()(ids), mask)
        out = greedy_generate(model, cache, mask, next_logits, max_new_tokens=6, eos_id=-1)
        for prompt, generated in zip(prompts, out):
            seq = list(prompt)
            for _ in range(6):
                seq.append(int(model(input_ids=torch.tensor([seq])).logits[0, -1].argmax()))
            assert generated == seq[len(prompt) :]


def _stage_runs(tmp_path, llm_dir, *extra):
    base = llm_args(tmp_path, llm_dir, "stage.max_epochs=1", *extra)
    run(compose(base))
    run(compose(base + ["stage=align_stage1"]))
    return base


def test_stage1_trains_only_the_aligner_and_saves_only_it(tmp_path, tiny_llm_dir):
    base = llm_args(tmp_path, tiny_llm_dir, "stage.max_epochs=1")
    run(compose(base))
    cfg = compose(base + ["stage=align_stage1", "stage.train_text_encoder=false"])
    datamodule, module = build_align_stage1(cfg)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    optimizer = module.configure_optimizers()
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == {id(p) for p in module.aligner.parameters()}
    module.train()
    batch = next(iter(datamodule.train_dataloader()))
    module.training_step(batch, 0).backward()
    optimizer.step()
    after = module.state_dict()
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"aligner"}
    assert not module.backbone.training and not module.text_encoder.training  # frozen parts stay in eval mode
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    assert {k.split(".")[0] for k in checkpoint["state_dict"]} == {"aligner"}


def test_stage2_trains_only_the_projectors_and_saves_only_them(tmp_path, tiny_llm_dir):
    base = _stage_runs(tmp_path, tiny_llm_dir)
    cfg = compose(base + ["stage=align_stage2", "stage.batch_size=2"])
    datamodule, module = build_align_stage2(cfg)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    llm_before = {k: v.clone() for k, v in module.llm.state_dict().items()}
    optimizer = module.configure_optimizers()
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == {id(p) for p in module.projector.parameters()}
    module.train()
    assert not module.llm.training and not module.backbone.training
    batch = next(iter(datamodule.train_dataloader()))
    loss = module.training_step(batch, 0)
    assert torch.isfinite(loss)
    loss.backward()
    optimizer.step()
    after = module.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("projector.") for k in changed)
    assert all(torch.equal(v, module.llm.state_dict()[k]) for k, v in llm_before.items())
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    assert checkpoint["state_dict"] and all(k.startswith("projector.") for k in checkpoint["state_dict"])


def test_eval_modes_on_known_answers(tmp_path, tiny_llm_dir, monkeypatch):
    """Scores that rank the target first and answers naming it give Hit@1 = 1 in both modes;
    an answer outside the candidates is neither a hit nor a valid answer."""
    base = _stage_runs(tmp_path, tiny_llm_dir)
    datamodule, module = build_align_stage2(compose(base + ["stage=align_stage2", "stage.max_eval_users=6"]))
    module.eval()
    batch = next(iter(datamodule.test_dataloader()))
    titles = module.prompts.titles
    target = batch.candidates[:, 0]

    def fake_evaluate(batch, ordered, variant, user, score, generate):
        scores = (ordered == target.unsqueeze(1)).float()  # the target first, in prompt order
        if variant == "llm_only":
            scores = -scores
        answers = [f' "{titles[int(t)].upper()}" ' for t in target] if variant == "main" else [' "nothing like it"'] * len(target)
        return scores, answers if generate else None

    monkeypatch.setattr(module, "_evaluate", fake_evaluate)
    out = module._eval_step(batch, test=True)
    assert (out["scores"][:, 0] > out["scores"][:, 1:].max(1).values).all()  # back in column order, target in column 0
    assert out["rate/generate/hit@1"].all() and out["rate/generate/valid_answer_rate"].all()
    assert not out["rate/llm_only/generate/hit@1"].any() and not out["rate/llm_only/generate/valid_answer_rate"].any()
    assert (out["scores/llm_only"][:, 0] < out["scores/llm_only"][:, 1:].min(1).values).all()


def test_train_all_chain_on_tiny_llm(tmp_path, tiny_llm_dir):
    """cf_pretrain -> align_stage1 -> align_stage2 with real scoring and generation; artifacts hold trained parts only."""
    base = _stage_runs(tmp_path, tiny_llm_dir)
    metrics = run(compose(base + ["stage=align_stage2", "stage.max_train_users=16", "stage.max_eval_users=6", "stage.max_new_tokens=8"]))
    run_dir = tmp_path / "runs" / "synthetic" / "align_stage2" / "sasrec" / "tiny"
    saved = json.loads((run_dir / "metrics.json").read_text())
    records = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    # the generate-mode figures are exactly the share of per-user hits written to predictions.jsonl
    for prefix in ("", "llm_only/"):
        hits = [r[f"{prefix}hit"] for r in records]
        assert metrics[f"test/{prefix}generate/hit@1"] == pytest.approx(sum(hits) / len(hits))
    # cold and warm split the same users: the whole is a mixture of its parts (or one part is empty)
    for prefix in ("", "llm_only/", "shuffled/", "backbone/"):
        parts = [metrics[f"test/{prefix}{s}/hit@1"] for s in ("cold", "warm")]
        defined = [v for v in parts if v == v]
        assert defined and min(defined) - 1e-6 <= metrics[f"test/{prefix}hit@1"] <= max(defined) + 1e-6
        # the intervals are those of the per-user ranks written to predictions.jsonl
        hits = [r[f"{prefix}rank"] == 0 for r in records]
        assert metrics[f"test/{prefix}hit@1"] == pytest.approx(sum(hits) / len(hits))
        assert metrics[f"test/{prefix}hit@1_ci95_low"] <= metrics[f"test/{prefix}hit@1"] <= metrics[f"test/{prefix}hit@1_ci95_high"]
    for other in ("llm_only", "shuffled", "backbone"):
        diff = metrics["test/hit@1"] - metrics[f"test/{other}/hit@1"]
        assert saved[f"test/diff/{other}/hit@1"] == pytest.approx(diff)
        assert saved[f"test/diff/{other}/hit@1_ci95_low"] <= diff <= saved[f"test/diff/{other}/hit@1_ci95_high"]
    assert "test/paper_cold/hit@1" in saved and "test/diff/llm_only/generate/hit@1" in saved
    assert saved["num_test_users"] == 6 and saved["epochs"] == 1 and saved["train_tokens_per_second"] > 0
    weights = torch.load(run_dir / "weights.pt", weights_only=True)
    stats = ("user_mean", "user_std", "item_mean", "item_std", "token_norm")  # the projectors' fixed buffers
    assert list(weights) == ["projector"] and all(k.startswith(("user_proj", "item_proj", *stats)) for k in weights["projector"])
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert all(k.startswith("projector.") for k in ckpt["state_dict"])
    assert len(records) == 6 and {"answer", "scores", "llm_only/scores"} <= set(records[0])
    stage1 = tmp_path / "runs" / "synthetic" / "align_stage1" / "sasrec"
    s1 = torch.load(stage1 / "weights.pt", weights_only=True)
    assert set(s1) == {"aligner", "text_encoder"}  # the text encoder was fine-tuned (the default)
    assert torch.load(stage1 / "text_latents.pt", weights_only=True)["text_latents"].shape[0] == saved["num_items"] + 1


def test_missing_earlier_stage_names_the_command(tmp_path, tiny_llm_dir):
    from lightning_modules.artifacts import StageArtifactError

    cfg = compose(llm_args(tmp_path, tiny_llm_dir, "stage=align_stage2"))
    with pytest.raises(StageArtifactError, match="make align-stage1 DATASET=synthetic BACKBONE=sasrec"):
        build_align_stage2(cfg)
    other = tmp_path / "runs" / "synthetic" / "align_stage1" / "gru4rec"
    other.mkdir(parents=True)
    (other / "metrics.json").write_text("{}")
    with pytest.raises(StageArtifactError, match="finished runs there: .*gru4rec"):
        build_align_stage2(cfg)


def test_quantization_needs_cuda(tiny_llm_dir):
    from aligners.llm import LLMConfig, load_llm

    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        load_llm(LLMConfig(name_or_path=str(tiny_llm_dir), quantization="8bit"), "cpu")
    with pytest.raises(ValueError, match="llm.quantization must be one of"):
        LLMConfig(quantization="3bit")
