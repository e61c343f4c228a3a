"""LightningDataModule over a processed dataset: training batches, and validation/test users.

Batches are built whole by the dataset (``dataset[list_of_indices] -> SeqBatch``), which keeps
collation vectorised. Training batches of sequential models are bucketed by length and padded to
the longest sequence in the batch, not to ``max_len``: Beauty's mean length is 8.9, so padding to
50 would spend most of the compute on padding.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from datamodules.batch import SeqBatch
from datamodules.cache import ensure_processed, load_processed
from datamodules.config import DataConfig
from datamodules.constants import PAD_ID
from datamodules.preprocess import ProcessedData
from datamodules.samplers import BucketBatchSampler, ShardedEvalSampler
from datamodules.sampling import sample_batch_negatives

INPUT_KINDS = ("sequence", "user", "last_item")


def gather_padded(flat: Tensor, starts: Tensor, lengths: Tensor, left: bool) -> Tensor:
    """Rows ``flat[starts[b] : starts[b] + lengths[b]]`` padded with PAD_ID to ``[B, max(lengths)]``."""
    width = int(lengths.max()) if len(lengths) else 0
    cols = torch.arange(width)
    if left:
        offset = cols.unsqueeze(0) - (width - lengths).unsqueeze(1)
    else:
        offset = cols.unsqueeze(0).expand(len(lengths), width)
    valid = (offset >= 0) & (offset < lengths.unsqueeze(1))
    index = (starts.unsqueeze(1) + offset.clamp(min=0)).clamp(max=max(len(flat) - 1, 0))
    return torch.where(valid, flat[index], torch.full_like(index, PAD_ID))


class _StepSeeds:
    """Seeds of per-batch generators: a function of (seed, epoch, rank, step) only, so negatives
    are identical across runs whatever the number of loader workers."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def generator(self, epoch: int, rank: int, step: int) -> torch.Generator:
        seq = np.random.SeedSequence([self.seed, epoch, rank, step])
        return torch.Generator().manual_seed(int(seq.generate_state(1, dtype=np.uint64)[0] >> 1))


class SequenceTrainData(Dataset):
    """Next-item training windows of every user's training sequence.

    A training sequence ``t_1..t_n`` gives inputs ``t_1..t_{n-1}`` and targets ``t_2..t_n``;
    sequences longer than ``max_len + 1`` are cut into consecutive windows, so one epoch visits
    every training position exactly once.
    """

    def __init__(self, data: ProcessedData, max_len: int, num_negatives: int, seed: int) -> None:
        self.data = data
        self.num_negatives = num_negatives
        self.seeds = _StepSeeds(seed)
        users = torch.arange(1, data.num_users + 1)
        n_train = data.train_length(users)
        rows_u, rows_start, rows_end = [], [], []
        for user, n, start in zip(users.tolist(), n_train.tolist(), data.seq_offsets[1:-1].tolist()):
            end = n
            while end >= 2:
                rows_u.append(user)
                rows_start.append(start + max(0, end - max_len - 1))
                rows_end.append(start + end)
                end -= max_len
        self.users = torch.tensor(rows_u, dtype=torch.long)
        self.starts = torch.tensor(rows_start, dtype=torch.long)
        self.ends = torch.tensor(rows_end, dtype=torch.long)
        self.lengths = self.ends - self.starts - 1

    def __len__(self) -> int:
        return len(self.users)

    @property
    def num_positions(self) -> int:
        return int(self.lengths.sum())

    def __getitem__(self, request: tuple[int, int, int, list[int]]) -> SeqBatch:
        epoch, rank, step, indices = request
        idx = torch.as_tensor(indices, dtype=torch.long)
        lengths, starts = self.lengths[idx], self.starts[idx]
        item_seq = gather_padded(self.data.seq_items, starts, lengths, left=True)
        pos = gather_padded(self.data.seq_items, starts + 1, lengths, left=True)
        users = self.users[idx]
        neg = None
        if self.num_negatives:
            history = _train_history(self.data, users)
            neg = sample_batch_negatives(
                history, (*pos.shape, self.num_negatives), self.data.num_items, self.seeds.generator(epoch, rank, step)
            )
            neg = neg.masked_fill((pos == PAD_ID).unsqueeze(-1), PAD_ID)
        return SeqBatch(user_ids=users, item_seq=item_seq, pos_items=pos, neg_items=neg)


class _OneSamplePerRow(Dataset):
    """Training data with one sample per row of ``rows`` (so every "length" is 1) and seeded negatives per batch."""

    def __init__(self, data: ProcessedData, rows: Tensor, num_negatives: int, seed: int) -> None:
        self.data = data
        self.rows = rows
        self.num_negatives = num_negatives
        self.seeds = _StepSeeds(seed)
        self.lengths = torch.ones(len(rows), dtype=torch.long)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def num_positions(self) -> int:
        return len(self.rows)

    def _negatives(self, users: Tensor, epoch: int, rank: int, step: int) -> Tensor | None:
        """``[B, num_negatives]`` uniform items outside each user's training items, or None."""
        if not self.num_negatives:
            return None
        return sample_batch_negatives(
            _train_history(self.data, users),
            (len(users), self.num_negatives),
            self.data.num_items,
            self.seeds.generator(epoch, rank, step),
        )


class InteractionTrainData(_OneSamplePerRow):
    """Training ``(user, item)`` pairs for non-sequential models (NCF, LightGCN); one epoch = every pair once."""

    def __init__(self, data: ProcessedData, num_negatives: int, seed: int) -> None:
        pairs = data.train_interactions()
        super().__init__(data, pairs[pairs[:, 0] != PAD_ID], num_negatives, seed)
        self.pairs = self.rows

    def __getitem__(self, request: tuple[int, int, int, list[int]]) -> SeqBatch:
        epoch, rank, step, indices = request
        pairs = self.pairs[torch.as_tensor(indices, dtype=torch.long)]
        users, pos = pairs[:, 0], pairs[:, 1]
        return SeqBatch(user_ids=users, pos_items=pos, neg_items=self._negatives(users, epoch, rank, step))


class LastItemTrainData(_OneSamplePerRow):
    """One training example per user: the last training item as target, the items before it as history.

    A-LLMRec trains both alignment stages this way (paper section 4.1.3). Users need at least two
    training items. ``users`` restricts the set (a seeded subset for quick runs).
    """

    def __init__(self, data: ProcessedData, max_len: int, num_negatives: int, seed: int, users: Tensor | None = None) -> None:
        if users is None:
            users = torch.arange(1, data.num_users + 1)
        super().__init__(data, users[data.train_length(users) >= 2], num_negatives, seed)
        self.users = self.rows
        self.max_len = max_len

    def __getitem__(self, request: tuple[int, int, int, list[int]]) -> SeqBatch:
        epoch, rank, step, indices = request
        users = self.users[torch.as_tensor(indices, dtype=torch.long)]
        n_train = self.data.train_length(users)
        starts = self.data.seq_offsets[users]
        hist_len = (n_train - 1).clamp(max=self.max_len)
        return SeqBatch(
            user_ids=users,
            item_seq=gather_padded(self.data.seq_items, starts + n_train - 1 - hist_len, hist_len, left=True),
            pos_items=self.data.seq_items[starts + n_train - 1],
            neg_items=self._negatives(users, epoch, rank, step),
        )


def user_subset(users: Tensor, limit: int, seed: int) -> Tensor:
    """``limit`` users drawn with ``seed`` (ascending), or all of them when ``limit`` is 0 or too large."""
    if not limit or limit >= len(users):
        return users
    perm = np.random.default_rng(seed).permutation(len(users))[:limit]
    return users[np.sort(perm)]


def _train_history(data: ProcessedData, users: Tensor) -> Tensor:
    """Training items of ``users``, right-padded ``[B, H]``."""
    return gather_padded(data.seq_items, data.seq_offsets[users], data.train_length(users), left=False)


class EvalData(Dataset):
    """Validation or test users with their history, frozen candidates and full-ranking mask.

    Leave-one-out data: for the test split the history is training + validation item (as in
    A-LLMRec); for validation it is the training items only. The target is ``candidates[:, 0]``.

    Multi-target data (``rlmrec``): users with at least one item in the split; ``targets`` holds
    all of them and ``history`` (the full-ranking mask) the training items only, for validation
    and test alike. Validation items are thus *not* masked at test time: an RLMRec/SSLRec quirk
    that FACE inherits, kept so that the numbers compare. There are no candidates (``None``).

    ``item_seq`` holds the last ``max_len`` items of the history.
    """

    def __init__(self, data: ProcessedData, split: str, max_len: int, max_users: int = 0, seed: int = 0) -> None:
        if split not in ("val", "test"):
            raise ValueError(f"split must be 'val' or 'test', got {split!r}")
        self.data = data
        self.split = split
        self.max_len = max_len
        self.users = user_subset(data.split_users(split), max_users, seed)
        self.candidates: Tensor | None = None
        if data.has_candidates:
            self.candidates = (data.valid_candidates if split == "val" else data.test_candidates)[self.users]
        self.target_start: Tensor | None = None
        self.target_len: Tensor | None = None
        if data.multi_target:
            self.hist_len = data.train_length(self.users)
            self.target_start, self.target_len = data.split_span(self.users, split)
        else:
            # Position of the target inside the sequence: second-to-last (val) or last (test).
            self.hist_len = data.lengths[self.users] - (2 if split == "val" else 1)

    def __len__(self) -> int:
        return len(self.users)

    def __getitem__(self, indices: list[int]) -> SeqBatch:
        idx = torch.as_tensor(indices, dtype=torch.long)
        users, hist_len = self.users[idx], self.hist_len[idx]
        starts = self.data.seq_offsets[users]
        recent = hist_len.clamp(max=self.max_len)
        targets = None
        if self.target_start is not None:
            targets = gather_padded(self.data.seq_items, starts + self.target_start[idx], self.target_len[idx], left=False)
        return SeqBatch(
            user_ids=users,
            item_seq=gather_padded(self.data.seq_items, starts + hist_len - recent, recent, left=True),
            candidates=None if self.candidates is None else self.candidates[idx],
            history=gather_padded(self.data.seq_items, starts, hist_len, left=False),
            targets=targets,
        )


class SeqDataModule(L.LightningDataModule):
    """Amazon, prepared-folder, RLMRec or synthetic data for every stage.

    ``input_kind`` selects the training samples: ``"sequence"`` (next-item windows, for SASRec,
    GRU4Rec, NextItNet) or ``"user"`` (user-item pairs, for NCF and LightGCN). ``num_negatives``
    per training target are sampled each step (0 for the full-softmax loss).
    """

    def __init__(
        self,
        cfg: DataConfig,
        input_kind: str = "sequence",
        num_negatives: int = 0,
        seed: int = 42,
        batch_size: int | None = None,
        eval_batch_size: int | None = None,
        max_train_users: int = 0,
        max_eval_users: int = 0,
        max_val_users: int = -1,
    ) -> None:
        super().__init__()
        if input_kind not in INPUT_KINDS:
            raise ValueError(f"input_kind must be one of {list(INPUT_KINDS)}, got {input_kind!r}")
        self.cfg = cfg
        self.input_kind = input_kind
        self.num_negatives = num_negatives
        self.seed = seed
        self.batch_size = batch_size or (cfg.batch_size if input_kind == "sequence" else cfg.pair_batch_size)
        self.eval_batch_size = eval_batch_size or cfg.eval_batch_size
        # Seeded subsets (0 = everyone): the same users whatever the run seed, so runs compare.
        self.max_train_users = max_train_users
        self.max_eval_users = max_eval_users
        self.max_val_users = max_eval_users if max_val_users < 0 else max_val_users  # -1 = as max_eval_users
        self.data: ProcessedData | None = None
        self.train_data: SequenceTrainData | InteractionTrainData | None = None

    def prepare_data(self) -> None:
        ensure_processed(self.cfg)

    def setup(self, stage: str | None = None) -> None:
        if self.data is None:
            self.data = load_processed(self.cfg)
            if self.input_kind == "sequence":
                self.train_data = SequenceTrainData(self.data, self.cfg.max_len, self.num_negatives, self.seed)
            elif self.input_kind == "last_item":
                users = user_subset(torch.arange(1, self.data.num_users + 1), self.max_train_users, self.cfg.eval_seed)
                self.train_data = LastItemTrainData(self.data, self.cfg.max_len, self.num_negatives, self.seed, users)
            else:
                self.train_data = InteractionTrainData(self.data, self.num_negatives, self.seed)

    @property
    def num_users(self) -> int:
        return self._loaded().num_users

    @property
    def multi_target(self) -> bool:
        """Evaluation by full ranking against every item of the split (``rlmrec``), no sampled candidates."""
        return self._loaded().multi_target

    @property
    def has_candidates(self) -> bool:
        """Whether evaluation batches carry the sampled protocol's ``candidates``."""
        return self._loaded().has_candidates

    @property
    def num_items(self) -> int:
        return self._loaded().num_items

    def _loaded(self) -> ProcessedData:
        if self.data is None:
            raise RuntimeError("call prepare_data() and setup() before using the datamodule")
        return self.data

    def _replicas(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 1, 0
        return trainer.world_size, trainer.global_rank

    def _loader(self, dataset: Dataset, sampler: Sampler) -> DataLoader:
        # batch_size=None: the sampler yields whole batches and the dataset builds SeqBatch itself.
        return DataLoader(
            dataset,
            sampler=sampler,
            batch_size=None,
            num_workers=self.cfg.num_workers,
            persistent_workers=self.cfg.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        self._loaded()
        world, rank = self._replicas()
        sampler = BucketBatchSampler(
            self.train_data.lengths, self.batch_size, self.seed, world, rank, bucket_factor=self.cfg.bucket_factor
        )
        return self._loader(self.train_data, sampler)

    def _eval_loader(self, split: str) -> DataLoader:
        limit = self.max_val_users if split == "val" else self.max_eval_users
        dataset = EvalData(self._loaded(), split, self.cfg.max_len, limit, self.cfg.eval_seed)
        world, rank = self._replicas()
        lengths = dataset.hist_len.clamp(max=self.cfg.max_len)
        return self._loader(dataset, ShardedEvalSampler(len(dataset), self.eval_batch_size, world, rank, lengths))

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def state_dict(self) -> dict[str, Any]:
        return {}
