"""A-LLMRec stage 2 beyond the paper's recipe: the shuffled control, the choice objective, the projectors'
token scale, the paper's cold/warm split and the bootstrap intervals (tiny random LLM, offline)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aligners.llm_projector import LLMProjector
from callbacks.intervals import hit_intervals, paired_figures
from lightning_modules.align_stage2 import build_align_stage2
from lightning_modules.config import compose
from lightning_modules.run import run
from lightning_modules.stage2_eval import derangements, paper_cold_warm
from tests.conftest import llm_args


def test_derangements_move_every_candidate_and_are_seeded():
    users = torch.arange(1, 60)
    d = derangements(users, 20, salt=3)
    assert (d != torch.arange(20)).all()  # no candidate keeps its own vector
    assert torch.equal(d.sort(1).values, torch.arange(20).expand(59, 20))  # a permutation of the row
    assert torch.equal(d, derangements(users, 20, salt=3)) and not torch.equal(d, derangements(users, 20, salt=4))
    assert (derangements(users, 2, salt=0) == torch.tensor([1, 0])).all()


def test_paper_cold_warm_is_the_bottom_and_top_share_by_training_count():
    counts = torch.tensor([0, 5, 1, 1, 9, 3, 2, 7, 4, 8, 6])  # padding id 0, then 10 items
    cold, warm = paper_cold_warm(counts, 0.3)
    assert cold.nonzero().flatten().tolist() == [2, 3, 6]  # counts 1, 1, 2
    assert warm.nonzero().flatten().tolist() == [4, 7, 9]  # counts 9, 7, 8
    assert not cold[0] and not warm[0] and not (cold & warm).any()


def test_hit_intervals_are_paired_over_the_same_users():
    rng = np.random.default_rng(0)
    main = rng.random(400) < 0.4
    same = main.copy()
    worse = main & (rng.random(400) < 0.5)  # loses about half of main's hits, gains none
    out = hit_intervals({"main": main, "same": same, "worse": worse}, "main", ("same", "worse"), resamples=500)
    assert out["test/hit@1_ci95_low"] < main.mean() < out["test/hit@1_ci95_high"]
    # a binomial interval's half-width is about 1.96 * sqrt(p (1 - p) / n)
    half = 1.96 * np.sqrt(main.mean() * (1 - main.mean()) / 400)
    assert out["test/hit@1_ci95_high"] - out["test/hit@1_ci95_low"] == pytest.approx(2 * half, rel=0.2)
    assert out["test/diff/same/hit@1"] == out["test/diff/same/hit@1_ci95_low"] == out["test/diff/same/hit@1_ci95_high"] == 0
    assert out["test/diff/worse/hit@1"] == pytest.approx(main.mean() - worse.mean())
    assert out["test/diff/worse/hit@1_ci95_low"] > 0  # paired: far narrower than two separate intervals
    with pytest.raises(ValueError, match="same users"):
        hit_intervals({"main": main, "short": main[:10]}, "main", ("short",))


def test_paired_figures_of_real_values_share_their_resamples():
    rng = np.random.default_rng(0)
    main = np.where(rng.random(3000) < 0.1, 1.0 / np.log2(rng.integers(0, 10, 3000) + 2.0), 0.0)  # NDCG@10-like
    half = main * 0.5
    noisy = np.where(rng.random(3000) < 0.5, main, 0.0)
    out = paired_figures({"main": main, "same": main.copy(), "half": half, "noisy": noisy}, "main", "full/ndcg@10")
    assert out["test/full/ndcg@10_ci95_low"] < main.mean() < out["test/full/ndcg@10_ci95_high"]
    assert out["test/diff/same/full/ndcg@10"] == out["test/diff/same/full/ndcg@10_ci95_low"] == 0 == out["test/diff/same/full/ndcg@10_ci95_high"]
    assert out["test/ratio/same/full/ndcg@10_ci95_low"] == out["test/ratio/same/full/ndcg@10_ci95_high"] == 1
    # every resample keeps half's rows paired with main's, so the ratio is exactly 2 in each of them
    assert out["test/ratio/half/full/ndcg@10_ci95_low"] == pytest.approx(2) == out["test/ratio/half/full/ndcg@10_ci95_high"]
    assert out["test/diff/noisy/full/ndcg@10"] == pytest.approx(main.mean() - noisy.mean())
    assert out["test/diff/noisy/full/ndcg@10_ci95_low"] > 0
    assert out["test/ratio/noisy/full/ndcg@10_ci95_low"] < out["test/ratio/noisy/full/ndcg@10"] < out["test/ratio/noisy/full/ndcg@10_ci95_high"]
    with pytest.raises(ValueError, match="one length"):
        paired_figures({"main": main, "short": main[:10]}, "main", "full/ndcg@10")


def test_projector_token_scale_and_standardised_inputs_are_saved():
    torch.manual_seed(0)
    proj = LLMProjector(6, 4, 16, standardize=True, token_norm=3.2)
    users, items = torch.randn(50, 6) * 7 + 3, torch.randn(30, 4) * 0.01
    proj.fit_input_stats(users, items)
    out = proj.project_user(users)
    torch.testing.assert_close(out.norm(dim=-1), torch.full((50,), 3.2))
    torch.testing.assert_close(proj.project_items(items).norm(dim=-1), torch.full((30,), 3.2))
    standardised = (users - users.mean(0)) / users.std(0)
    direction = proj.user_proj(standardised)
    torch.testing.assert_close(out, direction * 3.2 / direction.norm(dim=-1, keepdim=True))
    again = LLMProjector(6, 4, 16, standardize=True)
    again.load_state_dict(proj.state_dict())  # statistics and norm are buffers of the saved state
    torch.testing.assert_close(again.project_user(users), out)
    plain = LLMProjector(6, 4, 16)  # the paper's projectors: no rescaling
    assert not torch.allclose(plain.project_user(users).norm(dim=-1), torch.full((50,), 3.2))


@pytest.fixture(scope="module")
def stage1_runs(tmp_path_factory, tiny_llm_dir):
    tmp = tmp_path_factory.mktemp("stage2_controls")
    base = llm_args(tmp, tiny_llm_dir, "stage.max_epochs=1")
    run(compose(base))
    run(compose(base + ["stage=align_stage1"]))
    return base


@pytest.mark.parametrize("objective", ["choice", "both"])
def test_choice_objective_gradient_reaches_the_projectors_only(stage1_runs, objective):
    args = [f"stage.objective={objective}", "stage.score_reduction=first_k", "stage.score_first_k=2"]
    datamodule, module = build_align_stage2(
        compose(stage1_runs + ["stage=align_stage2", "stage.batch_size=3", "stage.token_norm=true", "stage.standardize_inputs=true", *args])
    )
    module.train()
    batch = next(iter(datamodule.train_dataloader()))
    loss = module.training_step(batch, 0)
    assert torch.isfinite(loss) and loss.requires_grad
    loss.backward()
    for name, p in module.projector.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    for part in ("user_proj", "item_proj"):  # both the user and the candidate vectors carry the choice
        assert any(p.grad.abs().sum() > 0 for n, p in module.projector.named_parameters() if n.startswith(part)), part
    for name, p in [*module.llm.named_parameters(), *module.backbone.named_parameters()]:
        assert not p.requires_grad and p.grad is None, name
    # with 1 + num_negatives candidates, an uninformed choice costs about log(C)
    if objective == "choice":
        assert 0 < loss.item() < 3 * np.log(batch.neg_items.shape[1] + 1)


def test_shuffled_control_changes_only_the_candidate_vectors(stage1_runs, monkeypatch):
    datamodule, module = build_align_stage2(compose(stage1_runs + ["stage=align_stage2", "stage.max_eval_users=4"]))
    module.eval()
    batch = next(iter(datamodule.test_dataloader()))
    seen = {}

    def capture(seqs, left, user, history, candidates, table):
        seen.setdefault("calls", []).append((seqs, candidates.clone()))
        return original(seqs, left, user, history, candidates, table)

    original = module._embed
    monkeypatch.setattr(module, "_embed", capture)
    module.answer(batch, "main")
    module.answer(batch, "shuffled")
    (main_text, main_vecs), (shuf_text, shuf_vecs) = seen["calls"]
    assert main_text == shuf_text  # the same prompt: every title in its place
    assert torch.equal(main_vecs.sort(1).values, shuf_vecs.sort(1).values) and (main_vecs != shuf_vecs).all()


def test_report_table_shows_the_controls_and_the_intervals():
    from benchmarks.report import llm_table

    metrics = {"test/hit@1": 0.3, "test/hit@1_ci95_low": 0.26, "test/hit@1_ci95_high": 0.34, "test/shuffled/hit@1": 0.1}
    metrics.update({"test/diff/shuffled/hit@1": 0.2, "test/diff/shuffled/hit@1_ci95_low": 0.15, "test/diff/shuffled/hit@1_ci95_high": 0.25})
    table = llm_table(metrics)
    assert "| A-LLMRec, score | 0.3000 |" in table and "[0.2600, 0.3400]" in table
    assert "candidate vectors shuffled, score | 0.1000" in table and "shuffled: +0.2000 [0.1500, 0.2500]" in table


def test_stage2_learns_the_choice_from_the_cf_vectors_alone(tmp_path, mixing_llm_dir):
    """Synthetic titles are a seeded random draw per item, so only the CF vectors tell the target. With each
    candidate's vector in its answer (``prompt.answer='{emb} "{title}"'``), scored on its first token (the
    same ``' '`` for every candidate), a tiny random LLM's stage 2 learns the choice: far above the shuffled
    control (titles in place, vectors permuted among the user's candidates) on the same users, and above
    the same LLM without vectors, which cannot tell the candidates apart here (all its scores tie, and
    ties count against the target)."""
    base = llm_args(tmp_path, mixing_llm_dir, "stage.max_epochs=10", "data.synthetic_users=200")
    run(compose(base))
    run(compose(base + ["stage=align_stage1", "stage.max_epochs=2"]))
    stage2 = base + [
        "stage=align_stage2", "stage.max_epochs=6", "stage.objective=choice", "stage.score_reduction=first_k",
        "stage.score_first_k=1", "stage.lr=0.03", "stage.token_norm=true", "stage.standardize_inputs=true",
        "stage.variants=[llm_only,shuffled]", "stage.generate_variants=[]", "stage.validate=false",
        "prompt.answer='{emb} \"{title}\"'", "prompt.prefix='Shop.'", "prompt.max_title_tokens=4",
    ]
    m = run(compose(stage2))
    chance = 1 / 5  # 1 + 4 candidates
    assert m["test/hit@1"] > chance + 0.15, m["test/hit@1"]
    for control in ("llm_only", "shuffled"):
        assert m["test/hit@1"] > m[f"test/{control}/hit@1"] + 0.15, (control, m["test/hit@1"], m[f"test/{control}/hit@1"])
        assert m[f"test/diff/{control}/hit@1_ci95_low"] > 0, control


def test_stage2_pilot_tunes_on_validation_users_only(stage1_runs, monkeypatch):
    """benchmarks/stage2_pilot.py (how the quick profile was chosen) trains with the stage's own optimiser and
    scores validation users' validation items; it never builds the test loader."""
    import io

    from benchmarks import stage2_pilot
    from datamodules.datamodule import SeqDataModule

    def no_test(self):
        raise AssertionError("the pilot read test users")

    monkeypatch.setattr(SeqDataModule, "test_dataloader", no_test)
    out = io.StringIO()
    records = stage2_pilot.pilot(
        stage1_runs + ["stage.max_val_users=6", "stage.objective=choice", "stage.warmup_steps=2", "trainer.gradient_clip_val=1.0"],
        steps=10, every=5, llm_only=True, out=out,
    )
    assert records[0]["validation_users"] == 6
    evaluations = [r for r in records if "main" in r]
    assert [r["step"] for r in evaluations] == [5, 10]
    assert all(0 <= r[v] <= 1 for r in evaluations for v in ("main", "shuffled"))
    assert records[1] == {"step": 0, "llm_only": records[1]["llm_only"]} and 0 <= records[1]["llm_only"] <= 1
    assert [r["step"] for r in records if "train_loss" in r] == [10]
    assert len(out.getvalue().splitlines()) == len(records)


def test_a_batch_count_caps_every_epoch_and_the_throughput_counts_what_ran(stage1_runs):
    """trainer.limit_train_batches above 1 is a number of batches per epoch (the quick profile's 200 steps over all
    users); train_samples_per_second counts the examples that ran, not the pool they were drawn from."""
    m = run(compose(stage1_runs + [
        "stage=align_stage2", "run_name=batch_count", "stage.batch_size=2", "stage.max_train_users=0", "stage.max_epochs=2",
        "trainer.limit_train_batches=3", "stage.validate=false", "stage.max_eval_users=2", "stage.variants=[]",
        "stage.generate_variants=[]",
    ]))
    assert m["global_step"] == 6 and m["epochs"] == 2
    assert m["num_train_users"] > 6  # the pool is larger than what the capped epochs drew
    assert m["train_samples_per_second"] == pytest.approx(3 * 2 / m["seconds_per_epoch"], rel=0.05)


def test_benchmarks_train_with_a_warm_up_schedule(stage1_runs):
    """The quick profile's stage 2 has a warm-up (configure_optimizers returns Lightning's dict): the benchmark's
    timed steps and the pilot take its optimiser and step its schedule."""
    from benchmarks.timing import optimiser_and_schedule, time_training

    datamodule, module = build_align_stage2(compose(stage1_runs + ["stage=align_stage2", "stage.warmup_steps=4", "stage.lr=0.01"]))
    optimiser, schedule = optimiser_and_schedule(module)
    assert isinstance(optimiser, torch.optim.Optimizer) and schedule is not None
    figures = time_training(module, datamodule.train_dataloader(), 2, torch.device("cpu"), tokens=True)
    assert figures["train_samples_per_second"] > 0 and figures["train_tokens_per_second"] > 0
    assert optimiser.param_groups[0]["lr"] == pytest.approx(0.01 / 4)  # the warm-up's first step
    module.cfg.warmup_steps = 0  # no warm-up: configure_optimizers returns the bare optimiser
    optimiser, schedule = optimiser_and_schedule(module)
    assert isinstance(optimiser, torch.optim.Optimizer) and schedule is None
