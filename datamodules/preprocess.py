"""Pure preprocessing functions: id maps, chronological sequences, leave-one-out, frozen candidates,
and the fixed multi-target splits of RLMRec data.

Everything here is deterministic given its inputs (and the seed of the candidate sampler), so a
processed dataset can be rebuilt bit for bit from the raw files.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from datamodules.constants import PAD_ID
from datamodules.sampling import sample_negatives
from datamodules.sources import SPLITS, SplitMatrices

log = logging.getLogger(__name__)

MIN_EVAL_INTERACTIONS = 3
"""Users with fewer interactions are kept for training only (as A-LLMRec does): leave-one-out
needs one validation and one test item and at least one item to learn from."""


@dataclass
class ProcessedData:
    """A preprocessed dataset: everything a datamodule needs, in internal ids.

    - ``user_raw[u]`` / ``item_raw[i]``: raw ids; index ``PAD_ID`` holds ``"<pad>"``.
    - ``titles[i]``, ``descriptions[i]``: item texts ("" when unknown).
    - ``seq_offsets [U+2]`` and ``seq_items [T]``, ``seq_times [T]``: user u's items are
      ``seq_items[seq_offsets[u]:seq_offsets[u+1]]`` (user 0 is empty).
    - ``valid_candidates``, ``test_candidates [U+1, C]``: the frozen sampled-protocol lists, the
      held-out item in column 0; all zeros for users with fewer than 3 interactions. ``None``
      for data without a sampled protocol (``rlmrec``).
    - ``split_counts [U+1, 3]``: ``None`` for leave-one-out data, where each sequence is
      chronological and its last two items are the validation and test targets (users with at
      least 3 interactions). Otherwise a fixed multi-target split: user u has
      ``split_counts[u] = (train, val, test)`` items, stored train, then validation, then test
      (each part by ascending item id; ``seq_times`` is 0).
    """

    user_raw: list[str]
    item_raw: list[str]
    titles: list[str]
    descriptions: list[str]
    seq_offsets: torch.Tensor
    seq_items: torch.Tensor
    seq_times: torch.Tensor
    valid_candidates: torch.Tensor | None
    test_candidates: torch.Tensor | None
    split_counts: torch.Tensor | None = None
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def num_users(self) -> int:
        return len(self.user_raw) - 1

    @property
    def num_items(self) -> int:
        return len(self.item_raw) - 1

    @property
    def lengths(self) -> torch.Tensor:
        """Number of items per user ``[U+1]``, all splits together."""
        return self.seq_offsets[1:] - self.seq_offsets[:-1]

    @property
    def multi_target(self) -> bool:
        """True for a fixed split with any number of validation and test items per user."""
        return self.split_counts is not None

    @property
    def has_candidates(self) -> bool:
        """True when the sampled protocol's frozen candidate lists exist."""
        return self.valid_candidates is not None and self.test_candidates is not None

    @property
    def eval_users(self) -> torch.Tensor:
        """Users evaluated at test time, ascending ``[U_eval]``: with a validation and a test item
        (leave-one-out), or with at least one test item (multi-target)."""
        return self.split_users("test")

    def split_users(self, split: str) -> torch.Tensor:
        """Users evaluated on ``split`` (``"val"`` or ``"test"``), ascending."""
        if split not in ("val", "test"):
            raise ValueError(f"split must be 'val' or 'test', got {split!r}")
        if self.split_counts is None:
            return torch.nonzero(self.lengths >= MIN_EVAL_INTERACTIONS).flatten()
        return torch.nonzero(self.split_counts[:, 1 if split == "val" else 2] > 0).flatten()

    def train_length(self, users: torch.Tensor) -> torch.Tensor:
        """Number of training items of ``users``: all but the last two for evaluated users
        (leave-one-out), or the training split (multi-target). They come first in the sequence."""
        if self.split_counts is not None:
            return self.split_counts[users, 0]
        lengths = self.lengths[users]
        return torch.where(lengths >= MIN_EVAL_INTERACTIONS, lengths - 2, lengths)

    def split_span(self, users: torch.Tensor, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(start, length)`` of the ``split`` items of ``users`` within their sequences (multi-target only)."""
        if self.split_counts is None:
            raise ValueError("split_span needs multi-target data (split_counts); leave-one-out has one target")
        counts = self.split_counts[users]
        if split == "val":
            return counts[:, 0], counts[:, 1]
        if split == "test":
            return counts[:, 0] + counts[:, 1], counts[:, 2]
        raise ValueError(f"split must be 'val' or 'test', got {split!r}")

    def train_interactions(self) -> torch.Tensor:
        """Training ``(user, item)`` pairs ``[E, 2]`` in sequence order."""
        users = torch.arange(self.num_users + 1)
        n_train = self.train_length(users)
        rows = torch.repeat_interleave(users, n_train)
        starts = torch.repeat_interleave(self.seq_offsets[:-1], n_train)
        within = torch.arange(len(rows)) - torch.repeat_interleave(torch.cumsum(n_train, 0) - n_train, n_train)
        return torch.stack([rows, self.seq_items[starts + within]], dim=1)

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> "ProcessedData":
        return cls(**state)


def remap_ids(interactions: list[tuple[str, str, int]]) -> tuple[list[str], list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Assign 1-based ids in order of first appearance (0 is padding), as A-LLMRec does.

    Returns ``(user_raw, item_raw, users [E], items [E], times [E])``.
    """
    user_index: dict[str, int] = {}
    item_index: dict[str, int] = {}
    users = np.empty(len(interactions), dtype=np.int64)
    items = np.empty(len(interactions), dtype=np.int64)
    times = np.empty(len(interactions), dtype=np.int64)
    for row, (user, item, ts) in enumerate(interactions):
        users[row] = user_index.setdefault(user, len(user_index) + 1)
        items[row] = item_index.setdefault(item, len(item_index) + 1)
        times[row] = ts
    return ["<pad>", *user_index], ["<pad>", *item_index], users, items, times


def build_sequences(users: np.ndarray, items: np.ndarray, times: np.ndarray, num_users: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Group interactions per user in chronological order.

    The sort is stable: interactions with equal timestamps keep their input order (Amazon
    timestamps have day resolution, so ties are common and the file order is the best we have).
    Returns ``(offsets [U+2], items [E], times [E])``.
    """
    order = np.argsort(times, kind="stable")
    order = order[np.argsort(users[order], kind="stable")]
    counts = np.bincount(users, minlength=num_users + 1)
    offsets = np.zeros(num_users + 2, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return offsets, items[order], times[order]


def leave_one_out(length: int) -> tuple[slice, int | None, int | None]:
    """Split positions of a sequence of ``length``: ``(train slice, valid index, test index)``.

    The last item is the test target, the one before the validation target, the rest is training.
    Users with fewer than 3 interactions get everything as training and no evaluation items.
    """
    if length < MIN_EVAL_INTERACTIONS:
        return slice(0, length), None, None
    return slice(0, length - 2), length - 2, length - 1


def sample_eval_candidates(
    offsets: np.ndarray, items: np.ndarray, num_items: int, num_negatives: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Frozen candidate lists for validation and test: ``[U+1, 1 + num_negatives]`` each.

    Negatives are drawn uniformly from the items the user never interacted with (the whole
    sequence, future items included), distinct within a list, with one seeded generator walked in
    user order, so the lists depend only on the data and the seed.
    """
    num_users = len(offsets) - 2
    valid = np.zeros((num_users + 1, 1 + num_negatives), dtype=np.int64)
    test = np.zeros_like(valid)
    rng = np.random.default_rng(seed)
    for user in tqdm(range(1, num_users + 1), desc="candidates", unit="user", mininterval=1.0, leave=False):
        seq = items[offsets[user] : offsets[user + 1]]
        _, valid_pos, test_pos = leave_one_out(len(seq))
        if valid_pos is None:
            continue
        history = set(seq.tolist())
        try:
            valid[user, 1:] = sample_negatives(history, num_negatives, num_items, rng)
            test[user, 1:] = sample_negatives(history, num_negatives, num_items, rng)
        except ValueError as err:
            raise ValueError(f"user {user}: {err}; lower data.num_eval_negatives or drop such users") from None
        valid[user, 0] = seq[valid_pos]
        test[user, 0] = seq[test_pos]
    return valid, test


def preprocess(
    interactions: list[tuple[str, str, int]],
    items: dict[str, tuple[str, str]],
    num_negatives: int,
    seed: int,
) -> ProcessedData:
    """Raw interactions and item texts -> :class:`ProcessedData`.

    Items that nobody interacted with are dropped (they can be neither trained nor evaluated).
    """
    if not interactions:
        raise ValueError("the dataset has no interactions")
    user_raw, item_raw, users, item_ids, times = remap_ids(interactions)
    num_users, num_items = len(user_raw) - 1, len(item_raw) - 1
    offsets, seq_items, seq_times = build_sequences(users, item_ids, times, num_users)
    valid, test = sample_eval_candidates(offsets, seq_items, num_items, num_negatives, seed)
    texts = [items.get(raw, ("", "")) for raw in item_raw]
    texts[PAD_ID] = ("", "")
    lengths = np.diff(offsets)[1:]
    stats = {
        "num_users": num_users,
        "num_items": num_items,
        "num_interactions": int(len(seq_items)),
        "num_eval_users": int((lengths >= MIN_EVAL_INTERACTIONS).sum()),
        "num_train_only_users": int((lengths < MIN_EVAL_INTERACTIONS).sum()),
        "mean_length": float(lengths.mean()),
        "items_with_title": int(sum(1 for t, _ in texts[1:] if t)),
        "density": float(len(seq_items) / (num_users * num_items)),
    }
    log.info("processed dataset: %s", stats)
    return ProcessedData(
        user_raw=user_raw,
        item_raw=item_raw,
        titles=[t for t, _ in texts],
        descriptions=[d for _, d in texts],
        seq_offsets=torch.from_numpy(offsets),
        seq_items=torch.from_numpy(seq_items),
        seq_times=torch.from_numpy(seq_times),
        valid_candidates=torch.from_numpy(valid),
        test_candidates=torch.from_numpy(test),
        stats=stats,
    )


def preprocess_splits(raw: SplitMatrices) -> ProcessedData:
    """A fixed train/validation/test split (RLMRec) -> multi-target :class:`ProcessedData`.

    Internal ids are raw ids + 1 (``PAD_ID`` = 0 stays padding), for users and items alike, so
    every row and column of the matrices keeps its place, interactions or not. Raw ids become
    strings ("0", "1", ...). There are no item texts and no sampled candidates.
    """
    num_users, num_items = raw.num_users, raw.num_items
    users = np.concatenate([raw.splits[s][0] for s in SPLITS]) + 1
    items = np.concatenate([raw.splits[s][1] for s in SPLITS]) + 1
    part = np.concatenate([np.full(len(raw.splits[s][0]), k, dtype=np.int64) for k, s in enumerate(SPLITS)])
    order = np.lexsort((items, part, users))  # by user, then split, then item
    counts = np.zeros((num_users + 1, len(SPLITS)), dtype=np.int64)
    for k, split in enumerate(SPLITS):
        counts[:, k] = np.bincount(raw.splits[split][0] + 1, minlength=num_users + 1)
    offsets = np.zeros(num_users + 2, dtype=np.int64)
    np.cumsum(counts.sum(1), out=offsets[1:])
    train = counts[1:, 0]
    stats = {
        "num_users": num_users,
        "num_items": num_items,
        "num_interactions": int(len(items)),
        **{f"num_{split}_interactions": int(counts[:, k].sum()) for k, split in enumerate(SPLITS)},
        "num_val_users": int((counts[:, 1] > 0).sum()),
        "num_eval_users": int((counts[:, 2] > 0).sum()),
        "num_users_without_train": int((train == 0).sum()),
        "num_items_without_train": int(num_items - len(np.unique(raw.splits["train"][1]))),
        "mean_train_length": float(train.mean()),
        "items_with_title": 0,
        "density": float(len(items) / (num_users * num_items)),
    }
    log.info("processed dataset: %s", stats)
    return ProcessedData(
        user_raw=["<pad>", *map(str, range(num_users))],
        item_raw=["<pad>", *map(str, range(num_items))],
        titles=[""] * (num_items + 1),
        descriptions=[""] * (num_items + 1),
        seq_offsets=torch.from_numpy(offsets),
        seq_items=torch.from_numpy(items[order]),
        seq_times=torch.zeros(len(items), dtype=torch.long),
        valid_candidates=None,
        test_candidates=None,
        split_counts=torch.from_numpy(counts),
        stats=stats,
    )
