"""Batch samplers: length-bucketed training batches dealt out to DDP ranks, and unpadded evaluation shards."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
from torch import Tensor
from torch.utils.data import Sampler


class BucketBatchSampler(Sampler):
    """Shuffled batches of similar-length samples holding about the same number of positions.

    Each epoch: a seeded permutation; chunks of ``batch_size * bucket_factor`` samples sorted by
    length; each chunk cut into batches of about ``batch_size * mean length`` positions; the batch
    order shuffled; batch ``i`` goes to rank ``i % num_replicas`` (the tail that does not divide
    evenly is dropped, so ranks get disjoint samples and the same number of batches).

    Why a position budget rather than a fixed number of sequences: the loss is a mean over a
    batch's positions, so a batch of 256 short sequences (~800 positions) would weigh each of its
    positions 15 times more than a batch of 256 long ones (~12,000 positions). Measured on Beauty,
    fixed-count buckets lost about 7% full-ranking NDCG@10 against random batches; equal-position
    buckets keep random batching's quality and the speed of padding only to the bucket's length.
    Yields ``(epoch, rank, step, indices)`` so the dataset can seed per-batch negatives.
    """

    def __init__(
        self,
        lengths: Tensor,
        batch_size: int,
        seed: int,
        num_replicas: int = 1,
        rank: int = 0,
        bucket_factor: int = 50,
    ) -> None:
        self.lengths = lengths.numpy()
        self.batch_size = batch_size
        self.budget = batch_size * float(self.lengths.mean()) if len(self.lengths) else 1.0
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.bucket_factor = bucket_factor
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, self.epoch])
        perm = rng.permutation(len(self.lengths))
        batches: list[np.ndarray] = []
        chunk = self.batch_size * self.bucket_factor
        for begin in range(0, len(perm), chunk):
            part = perm[begin : begin + chunk]
            part = part[np.argsort(self.lengths[part], kind="stable")]
            # Batch id of each sample: how many position budgets precede it (greedy, vectorised).
            ends = np.cumsum(self.lengths[part])
            ids = ((ends - self.lengths[part]) // self.budget).astype(np.int64)
            cuts = np.flatnonzero(np.diff(ids)) + 1
            batches.extend(np.split(part, cuts))
        order = rng.permutation(len(batches))
        usable = len(batches) // self.num_replicas * self.num_replicas
        return [batches[i] for i in order[self.rank : usable : self.num_replicas]]

    def __iter__(self) -> Iterator[tuple[int, int, int, list[int]]]:
        for step, batch in enumerate(self._batches()):
            yield self.epoch, self.rank, step, batch.tolist()

    def __len__(self) -> int:
        return len(self._batches())


class ShardedEvalSampler(Sampler):
    """Consecutive batches of this rank's users ``rank::num_replicas``, without padding.

    Lightning's default DistributedSampler repeats samples to even out ranks, which counts some
    users twice; here every user is evaluated exactly once across ranks.
    """

    def __init__(self, size: int, batch_size: int, num_replicas: int = 1, rank: int = 0, lengths: Tensor | None = None) -> None:
        self.indices = np.arange(rank, size, num_replicas)
        if lengths is not None:
            # Similar lengths in a batch means little padding; metrics do not depend on the order.
            self.indices = self.indices[np.argsort(lengths.numpy()[self.indices], kind="stable")]
        self.batch_size = batch_size

    def __iter__(self) -> Iterator[list[int]]:
        for begin in range(0, len(self.indices), self.batch_size):
            yield self.indices[begin : begin + self.batch_size].tolist()

    def __len__(self) -> int:
        return math.ceil(len(self.indices) / self.batch_size)
