"""The ``stage`` group of ``align_stage2`` (A-LLMRec stage 2): optimisation, objective, projector
scale, evaluation variants and intervals."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from aligners.llm_ops import SCORE_REDUCTIONS

VARIANTS = ("llm_only", "shuffled", "text_items")
OBJECTIVES = ("generate", "choice", "both")


@dataclass
class AlignStage2Config:
    """Optimisation and evaluation of ``align_stage2`` (the ``stage`` group)."""

    upstream_stage: ClassVar[str] = "align_stage1"
    groups: ClassVar[tuple[str, ...]] = ("llm", "prompt")

    name: str = "align_stage2"
    init_from: str = ""  # (str) the align_stage1 run directory; "" = <paths.runs>/<dataset>/align_stage1/<backbone>
    lr: float = 1e-4  # (float) Adam learning rate (paper Table 3)
    betas: tuple[float, float] = (0.9, 0.98)  # (float, float) Adam betas (official code)
    batch_size: int = 4  # (int) users per step (paper: 4)
    max_epochs: int = 5  # (int) paper: 5
    num_negatives: int = 19  # (int) training candidates besides the target, re-drawn every epoch
    validate: bool = True  # (bool) score-mode validation each epoch picks the checkpoint (the official code has none)
    monitor: str = "val/hit@1"  # (str) validation metric that picks the checkpoint to test
    eval_batch_size: int = 8  # (int) users per evaluation step
    max_train_users: int = 0  # (int) seeded subset of training users; 0 = all
    max_eval_users: int = 0  # (int) seeded subset of test (and validation) users; 0 = all
    max_val_users: int = -1  # (int) seeded subset of validation users; -1 = as max_eval_users, 0 = all
    objective: str = "generate"  # (str) generate (paper: the next title's tokens) | choice (softmax over the candidates' scores) | both
    generate_weight: float = 1.0  # (float) objective=both: weight of the generation term beside the choice term
    warmup_steps: int = 0  # (int) linear learning-rate warm-up from 0 over this many steps
    standardize_inputs: bool = False  # (bool) projector inputs standardised per feature (training users, all items)
    token_norm: bool = False  # (bool) projected vectors rescaled to the mean norm of the LLM's token embeddings
    variants: list[str] = field(
        default_factory=lambda: ["llm_only", "shuffled", "text_items"]
    )  # (list) llm_only | shuffled | text_items
    generate_variants: list[str] = field(default_factory=lambda: ["main", "llm_only"])  # (list) which run generate mode
    max_new_tokens: int = 48  # (int) generate mode: answer length cap (a title is cut to prompt.max_title_tokens)
    repetition_penalty: float = 1.0  # (float) generate mode; 1.5 = the official code (it corrupts titles, ref. 5.4)
    score_reduction: str = (
        "mean"  # (str) score mode and the choice objective: mean | sum | first_k log-probability of an answer
    )
    score_first_k: int = 3  # (int) score_reduction=first_k: answer tokens scored (the opening quote is one)
    cold_item_max_count: int = 5  # (int) target items with at most this many training interactions are cold
    cold_share: float = (
        0.35  # (float) the paper's split: the bottom (paper_cold) and top (paper_warm) share of items by training count
    )
    bootstrap_resamples: int = 2000  # (int) resamples of the test users for the 95% intervals
    bootstrap_seed: int = 0  # (int) seed of the resamples

    def __post_init__(self) -> None:
        if self.lr <= 0 or min(self.batch_size, self.eval_batch_size, self.num_negatives, self.max_new_tokens) < 1:
            raise ValueError("stage.lr must be > 0 and stage.batch_size, eval_batch_size, num_negatives, max_new_tokens >= 1")
        unknown = set(self.variants) - set(VARIANTS)
        if unknown:
            raise ValueError(f"stage.variants: unknown {sorted(unknown)}; expected some of {list(VARIANTS)}")
        unknown = set(self.generate_variants) - {"main", *self.variants}
        if unknown:
            raise ValueError(f"stage.generate_variants: {sorted(unknown)} is neither 'main' nor in stage.variants")
        if self.repetition_penalty <= 0:
            raise ValueError(f"stage.repetition_penalty must be > 0, got {self.repetition_penalty}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"stage.objective must be one of {list(OBJECTIVES)}, got {self.objective!r}")
        if self.score_reduction not in SCORE_REDUCTIONS or self.score_first_k < 1:
            raise ValueError(
                f"stage.score_reduction must be one of {list(SCORE_REDUCTIONS)} and stage.score_first_k >= 1, "
                f"got {self.score_reduction!r}, {self.score_first_k}"
            )
        if not 0 < self.cold_share <= 0.5 or self.warmup_steps < 0 or self.generate_weight < 0:
            raise ValueError(
                f"stage.cold_share must be in (0, 0.5], stage.warmup_steps and stage.generate_weight >= 0; "
                f"got {self.cold_share}, {self.warmup_steps}, {self.generate_weight}"
            )
