"""`make bench`'s suite: one JSON with every stage's throughput and peak memory (tiny models, synthetic data)."""

from __future__ import annotations

import json

import pytest

from tests.test_face import _face_args


@pytest.mark.slow  # four stage processes, about a minute: make test-full
def test_bench_suite_writes_every_stage_figures(tmp_path, tiny_word_llm_dir, tiny_sentence_encoder_dir, monkeypatch):
    from benchmarks.bench import main as bench
    from lightning_modules.run import main

    monkeypatch.chdir(__import__("pathlib").Path(__file__).resolve().parents[1])  # `python -m benchmarks.bench` from the repo
    args = _face_args(tmp_path, tiny_word_llm_dir, tiny_sentence_encoder_dir)
    face = ["stage.num_words=4", "stage.word_dim=16", "stage.entities_per_step=16", "stage.text_dtype=float32"]
    assert main([*args, "stage=cf_pretrain"]) == 0
    assert main([*args, "stage=align_stage1", "stage.max_epochs=1"]) == 0
    out = tmp_path / "bench.json"
    stages = "cf_pretrain,align_stage1,align_stage2,face"
    assert bench(["--stages", stages, "--steps", "2", "--users", "32", "--machine", "test", "--out", str(out), *args,
                  "prompt.num_history=3", *(f"face:{o}" for o in face)]) == 0
    results = json.loads(out.read_text())
    assert results["machine"] == "test" and list(results["stages"]) == stages.split(",")
    assert results["cpu_model"] and results["cpu_capability"] and isinstance(results["native_bf16"], bool)
    both = ["float32", "bfloat16"] if results["native_bf16"] else ["float32"]  # bf16 rows only where it is native
    assert {stage: list(by_dtype) for stage, by_dtype in results["stages"].items()} == {
        "cf_pretrain": both, "align_stage1": ["float32"], "align_stage2": both, "face": both}
    results["stages"] = {stage: by_dtype["float32"] for stage, by_dtype in results["stages"].items()}
    assert results["stages"]["face"]["compute_dtypes"]["stage.text_dtype"].startswith("float32")
    for stage, figures in results["stages"].items():
        assert figures["train_samples_per_second"] > 0, stage
        assert figures.get("eval_users_per_second", figures.get("score_users_per_second", 0)) > 0, stage
        assert figures.get("peak_mib", figures.get("peak_rss_mib", 0)) > 0, stage
    assert results["stages"]["align_stage2"]["train_tokens_per_second"] > 0
    assert results["stages"]["face"]["face_entities_per_second"] > 0
    assert "train_tflops" not in results["stages"]["align_stage2"]  # GPU only
