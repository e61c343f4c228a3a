"""The ``stage`` group of ``face`` (``conf/stage/face.yaml``): FACE's losses, vocabulary, the items
held out from text, the continued-training control, and how the descriptors are judged."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from aligners.vq_descriptor import PARTS_OF_SPEECH


@dataclass
class FACEConfig:
    """The ``face`` stage (``conf/stage/face.yaml``); official values unless noted there."""

    upstream_stage: ClassVar[str] = "cf_pretrain"
    groups: ClassVar[tuple[str, ...]] = ("llm", "text_encoder")

    name: str = "face"
    init_from: str = ""  # (str) cf_pretrain run dir; "" = runs/<dataset>/cf_pretrain/<backbone>
    lr: float = 1e-3  # (float) Adam lr of the FACE modules
    backbone_lr: float = 1e-4  # (float) Adam lr of the backbone (lr / 10)
    weight_decay: float = 0.0  # (float) Adam weight decay of the backbone
    backbone_face_grad: float = 0.03  # (float) scale of FACE's gradient into the backbone (1 = official; 0 = FACE reads the backbone only)
    max_epochs: int = 7  # (int) map + align epochs
    map_epochs: int = 0  # (int) epochs without the alignment loss first (official: a map phase first)
    patience: int = 0  # (int) early stopping on the monitor (0 = off)
    monitor: str = "val/interpretability/acc@1"  # (str) picks the tested align-phase epoch; "" = the last
    full_ranking_val: bool = True  # (bool) rank the whole catalogue at validation
    ce_compute_dtype: str = "auto"  # (str) matmul dtype of the backbone's chunked softmax loss: auto | bfloat16 | float32
    ce_chunk: int = 0  # (int) rows of logits per chunk of that loss; 0 = sized to the cache
    num_words: int = 16  # (int) descriptors per entity (n)
    word_dim: int = 256  # (int) concept / codebook width (d_w)
    vocab_size: int = 20000  # (int) the most frequent words (wordfreq) a descriptor may be
    min_word_length: int = 2  # (int) shortest descriptor word
    parts_of_speech: str = "noun_adj"  # (str) any | noun_adj (the official code: nouns and adjectives, by lemminflect's lexicon)
    dropout: float = 0.1  # (float) dropout of FACE's Transformer layers
    lookup: str = "cosine"  # (str) nearest word by cosine | euclidean (official; collapses onto a few words)
    standardize_concepts: bool = True  # (bool) centre and scale each slot's concepts by running statistics before the lookup
    word_balance_cap: float = 0.02  # (float) share of a step's entities above which a word's lookup penalty rises (0 = off)
    word_balance_rate: float = 0.01  # (float) its change per step, in cosine units
    word_item_cap: float = 0.04  # (float) after each epoch, penalties are set from zero so that no word is in more than this share of items (0 = off)
    vq_weight: float = 1.0
    recons_weight: float = 1.0
    align_weight: float = 0.0  # (float) the official alignment (0.1 there); see conf/stage/face.yaml
    temperature: float = 0.02  # (float) InfoNCE temperature
    word_align_weight: float = 1.0  # (float) relaxed word-level alignment (not in the official code; 0 = off)
    word_neighbours: int = 64  # (int) nearest words per slot in its soft assignment
    word_temperature: float = 0.05  # (float) soft assignment: softmax of cosine / this
    word_align_temperature: float = 0.05  # (float) InfoNCE temperature of the word-level alignment
    word_diversity_weight: float = 1.0  # (float) reward for the entropy of the step's averaged soft word choice (0 = off)
    word_slot_weight: float = 10.0  # (float) InfoNCE of every descriptor word on its own (0 = off)
    word_title_weight: float = 1.0  # (float) each seen item's slots should cover its title's words, IDF-weighted (0 = off)
    word_align_by_type: bool = True  # (bool) its InfoNCE contrasts items with items and users with users only
    entities_per_step: int = 128  # (int) users per step, with as many positive and random items (FACE's losses)
    encoder_entities_per_step: int = 64  # (int) of those users, how many (with their items) the text encoder reads
    user_prompt: str = "The user and his likes can be described as the following words:"
    item_prompt: str = "The product attracts those who can be described as the following words:"
    user_history: int = 20  # (int) most recent training titles that make a user's text
    text_dtype: str = "auto"  # (str) autocast dtype of the frozen text encoder: auto | bfloat16 | float32
    interpretability_candidates: int = 10  # (int) target + random items ranked by text similarity
    text_heldout_fraction: float = 0.15  # (float) seeded, popularity-stratified share of items in no text loss
    val_interpretability_users: int = 2000  # (int) seeded validation users whose targets give val/interpretability*/acc@1 (0 = off)
    control: bool = True  # (bool) also train a copy of the backbone on its own loss alone (test/control/*)
    judge_users: int = 500  # (int) seeded test users per judged set (seen / held-out targets); 0 = no judge
    judge_control_users: int = 500  # (int) of the held-out judged users, how many the random-word control and the ceiling see
    judge_title_tokens: int = 10  # (int) the judge reads each candidate title's first this many tokens (0 = all)
    judge_batch_size: int = 8  # (int) judged rows per LLM pass
    bootstrap_resamples: int = 2000  # (int) resamples of the rows for the 95% intervals

    def __post_init__(self) -> None:
        if not 0 <= self.map_epochs <= self.max_epochs:
            raise ValueError(f"stage.map_epochs must be in [0, stage.max_epochs={self.max_epochs}], got {self.map_epochs}")
        for key in ("lr", "backbone_lr", "temperature", "word_temperature", "word_align_temperature"):
            if getattr(self, key) <= 0:
                raise ValueError(f"stage.{key} must be > 0, got {getattr(self, key)}")
        for key in ("num_words", "word_dim", "entities_per_step", "user_history", "vocab_size", "word_neighbours",
                    "encoder_entities_per_step"):
            if getattr(self, key) < 1:
                raise ValueError(f"stage.{key} must be >= 1, got {getattr(self, key)}")
        if self.parts_of_speech not in PARTS_OF_SPEECH:
            raise ValueError(f"stage.parts_of_speech must be one of {list(PARTS_OF_SPEECH)}, got {self.parts_of_speech!r}")
        if not 0 <= self.word_item_cap < 1 or not 0 <= self.word_balance_cap < 1:
            raise ValueError(f"stage.word_item_cap and stage.word_balance_cap must be in [0, 1), got {self.word_item_cap}, {self.word_balance_cap}")
        if self.word_item_cap > 0 and self.lookup != "cosine":
            raise ValueError("stage.word_item_cap > 0 needs stage.lookup=cosine")
        if not 0 <= self.backbone_face_grad <= 1:
            raise ValueError(f"stage.backbone_face_grad must be in [0, 1], got {self.backbone_face_grad}")
        if self.word_title_weight > 0 and self.lookup != "cosine":
            raise ValueError("stage.word_title_weight > 0 needs stage.lookup=cosine")
        for key in ("word_align_weight", "word_slot_weight", "word_title_weight"):
            if getattr(self, key) < 0:
                raise ValueError(f"stage.{key} must be >= 0, got {getattr(self, key)}")
        if self.interpretability_candidates < 2:
            raise ValueError(f"stage.interpretability_candidates must be >= 2, got {self.interpretability_candidates}")
        if self.lookup not in ("cosine", "euclidean"):
            raise ValueError(f"stage.lookup must be cosine or euclidean, got {self.lookup!r}")
        for key in ("text_dtype", "ce_compute_dtype"):
            if getattr(self, key) not in ("auto", "bfloat16", "float32"):
                raise ValueError(f"stage.{key} must be auto, bfloat16 or float32, got {getattr(self, key)!r}")
        if self.patience and not self.monitor:
            raise ValueError(f"stage.patience={self.patience} needs a stage.monitor to stop on")
        if not 0 <= self.text_heldout_fraction < 1:
            raise ValueError(f"stage.text_heldout_fraction must be in [0, 1), got {self.text_heldout_fraction}")
        if self.monitor.startswith("val/interpretability") and self.val_interpretability_users < 1:
            raise ValueError(f"stage.monitor={self.monitor} needs stage.val_interpretability_users >= 1")
        for key in ("val_interpretability_users", "judge_users", "judge_control_users", "judge_title_tokens"):
            if getattr(self, key) < 0:
                raise ValueError(f"stage.{key} must be >= 0, got {getattr(self, key)}")
        if self.judge_batch_size < 1 or self.bootstrap_resamples < 1:
            raise ValueError("stage.judge_batch_size and stage.bootstrap_resamples must be >= 1")
        if self.monitor.startswith("val/full/") and not self.full_ranking_val:
            raise ValueError(f"stage.monitor={self.monitor} needs stage.full_ranking_val=true")
