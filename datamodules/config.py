"""Data configuration (the ``data`` group of ``conf/``)."""

from __future__ import annotations

from dataclasses import dataclass

SOURCES = ("amazon2014", "amazon2018", "prepared", "rlmrec", "synthetic")


@dataclass
class DataConfig:
    """Where a dataset comes from and how it is cut into training and evaluation data.

    ``source`` picks the reader: ``amazon2014`` (5-core reviews + metadata), ``amazon2018``
    (per-category files with A-LLMRec's recipe), ``prepared`` (``interactions.csv`` +
    ``items.csv``), ``rlmrec`` (RLMRec's pickled train/val/test matrices, a fixed multi-target
    split evaluated by full ranking only) or ``synthetic``. ``data_dir`` may point at a prepared
    folder or at a folder holding the raw files; when it is empty the raw files go to
    ``<root>/raw/<name>/``. ``num_eval_negatives`` does not apply to ``rlmrec`` (no sampled
    candidates there).
    """

    name: str = "?"
    source: str = "prepared"
    category: str = ""  # upstream category file stem, e.g. Beauty or Luxury_Beauty
    data_dir: str = ""  # prepared folder or raw-file folder; "" = <root>/raw/<name>
    root: str = "data"  # raw downloads and processed caches live under this folder
    download: bool = True  # fetch missing raw files from the official URLs
    # A-LLMRec 2018 recipe (ignored by other sources)
    min_count: int = 5  # one-pass user/item count threshold (A-LLMRec: 4 for Beauty/Toys)
    rating_threshold: float = 0.0  # reviews with overall below this are not counted (A-LLMRec: 3 for Beauty/Toys)
    # evaluation protocol
    num_eval_negatives: int = 19  # sampled protocol: 1 positive + 19 negatives
    eval_seed: int = 2024  # seed of the frozen candidate lists (part of the dataset, not of a run)
    max_len: int = 50  # history length fed to sequential models
    # loaders
    batch_size: int = 256  # sequences per training batch (sequential models)
    pair_batch_size: int = 512  # user-item pairs per training batch (NCF, LightGCN)
    bucket_factor: int = 50  # sort chunks of batch_size * bucket_factor sequences by length (1 = random batches)
    eval_batch_size: int = 1024
    num_workers: int = 0
    # synthetic source
    synthetic_users: int = 600
    synthetic_items: int = 120
    synthetic_min_len: int = 5
    synthetic_max_len: int = 20
    synthetic_seed: int = 0

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"data.source must be one of {list(SOURCES)}, got {self.source!r}")
        for key in ("num_eval_negatives", "max_len", "batch_size", "pair_batch_size", "bucket_factor", "eval_batch_size", "min_count"):
            if getattr(self, key) < 1:
                raise ValueError(f"data.{key} must be >= 1, got {getattr(self, key)}")
        if self.num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0, got {self.num_workers}")
        if self.source == "synthetic" and not 2 <= self.synthetic_min_len <= self.synthetic_max_len:
            raise ValueError(
                "data.synthetic_min_len must be >= 2 and <= data.synthetic_max_len, got "
                f"{self.synthetic_min_len} and {self.synthetic_max_len}"
            )
