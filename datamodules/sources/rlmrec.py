"""RLMRec's data (the data FACE uses): pickled scipy.sparse train/validation/test matrices."""

from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from datamodules.sources.common import DataFormatError, MissingDataError

log = logging.getLogger(__name__)


RLMREC_FILES = {"train": "trn_mat.pkl", "val": "val_mat.pkl", "test": "tst_mat.pkl"}
"""Split -> file name of RLMRec's interaction matrices (``data/<dataset>/`` in HKUDS/RLMRec)."""
SPLITS = tuple(RLMREC_FILES)


@dataclass
class SplitMatrices:
    """Binary interactions with a fixed train/validation/test split and integer ids.

    - ``num_users``, ``num_items``: the matrices' shape; raw ids are the row and column indices
      ``0..num_users-1`` and ``0..num_items-1`` (users or items without any interaction included).
    - ``splits``: ``"train"``, ``"val"``, ``"test"`` -> ``(users [E], items [E])`` int64 arrays of
      0-based raw ids, sorted by user then item, without duplicates. The splits are disjoint.
    """

    num_users: int
    num_items: int
    splits: dict[str, tuple[np.ndarray, np.ndarray]]


RLMREC_EXPECTED = (
    "a folder with trn_mat.pkl, val_mat.pkl and tst_mat.pkl, each a pickled scipy.sparse matrix of "
    "users x items with 0-based ids (RLMRec's data/<dataset>/, e.g. ../shared/data/rlmrec/amazon)"
)


class _ForbiddenPickle(Exception):
    """The pickle names a global other than numpy arrays and scipy.sparse matrices."""


class _SparseUnpickler(pickle.Unpickler):
    """An unpickler that builds only numpy arrays and scipy.sparse matrices.

    A pickle can run arbitrary code when loaded; interaction matrices need nothing but these
    classes, so anything else is refused rather than executed.
    """

    _NUMPY = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
    }

    def find_class(self, module: str, name: str) -> Any:
        sparse_class = module.startswith("scipy.sparse") and name.endswith(("_matrix", "_array"))
        if (module, name) not in self._NUMPY and not sparse_class:
            raise _ForbiddenPickle(f"{module}.{name}")
        return super().find_class(module, name)


def _load_sparse_pickle(path: Path) -> Any:
    """The 2-D scipy.sparse matrix pickled in ``path``, or a :class:`DataFormatError` saying what is wrong."""
    import scipy.sparse as sp

    if not path.is_file():
        raise MissingDataError(
            f"{path} does not exist; data.source=rlmrec needs {RLMREC_EXPECTED}. Pass data.data_dir=<folder> "
            "or DATA_DIR=<folder>."
        )
    try:
        with open(path, "rb") as fh:
            matrix = _SparseUnpickler(fh).load()
    except _ForbiddenPickle as err:
        raise DataFormatError(
            f"{path}: refusing to unpickle {err}; expected a pickled scipy.sparse matrix (users x items) and "
            "nothing else. Is this RLMRec's interaction matrix?"
        ) from None
    except ModuleNotFoundError as err:
        raise DataFormatError(
            f"{path}: unpickling needs the module {err.name!r}, which is not installed; RLMRec's pickles need "
            "numpy and scipy >= 1.8 (scipy.sparse._coo)."
        ) from err
    except Exception as err:  # a damaged pickle fails in many ways (EOFError, UnpicklingError, ValueError ...)
        raise DataFormatError(
            f"{path} is not a readable pickle ({type(err).__name__}: {err}); expected a pickled scipy.sparse "
            "matrix (users x items). The file is probably truncated or corrupt: copy it again."
        ) from err
    if not sp.issparse(matrix) or matrix.ndim != 2:
        got = type(matrix).__name__ + (f" of shape {matrix.shape}" if hasattr(matrix, "shape") else "")
        raise DataFormatError(
            f"{path} holds a {got}; expected a 2-D scipy.sparse matrix (users x items), as in RLMRec's "
            f"{path.name}."
        )
    return matrix


def read_rlmrec(folder: Path | str) -> SplitMatrices:
    """Read RLMRec's ``trn_mat.pkl``, ``val_mat.pkl``, ``tst_mat.pkl`` from ``folder``.

    Each file is a pickled scipy.sparse matrix (RLMRec ships ``coo_matrix``) of shape
    ``(#users, #items)``; the three must share it. Entries are binarised with ``!= 0`` as RLMRec
    does (``coo_matrix((m != 0).astype(np.float32))``), so stored zeros are not interactions and
    ratings count once. The splits must be disjoint: an item of a user's test split that is also
    in their training split would be masked at evaluation and could never be hit.
    """
    import scipy.sparse as sp

    folder = Path(folder)
    if not folder.is_dir():
        raise MissingDataError(
            f"RLMRec folder {folder} does not exist; expected {RLMREC_EXPECTED}. Pass data.data_dir=<folder> "
            "or DATA_DIR=<folder>."
        )
    paths = {split: folder / name for split, name in RLMREC_FILES.items()}
    matrices = {split: _load_sparse_pickle(path) for split, path in paths.items()}
    shapes = {split: tuple(int(n) for n in m.shape) for split, m in matrices.items()}
    if len(set(shapes.values())) != 1:
        listing = ", ".join(f"{paths[split].name} {shape}" for split, shape in shapes.items())
        raise DataFormatError(
            f"{folder}: the three matrices must have the same shape (#users, #items), got {listing}; they are "
            "not splits of one dataset."
        )
    num_users, num_items = shapes["train"]
    splits: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for split, matrix in matrices.items():
        binary = sp.coo_matrix((matrix != 0).astype(np.float32))
        binary.sum_duplicates()  # sorts by row, then column
        splits[split] = (binary.row.astype(np.int64), binary.col.astype(np.int64))
    if len(splits["train"][0]) == 0:
        raise DataFormatError(f"{paths['train']} has no non-zero entry; there is nothing to train on.")
    keys = {split: users * num_items + items for split, (users, items) in splits.items()}
    for first, second in (("train", "val"), ("train", "test"), ("val", "test")):
        shared = np.intersect1d(keys[first], keys[second])
        if len(shared):
            user, item = divmod(int(shared[0]), num_items)
            raise DataFormatError(
                f"{paths[first]} and {paths[second]} share {len(shared)} (user, item) pairs, e.g. user {user} "
                f"item {item}; RLMRec's splits are disjoint. This is not an RLMRec split (or the files are of "
                "different datasets)."
            )
    log.info(
        "read %s: %d users, %d items, %s interactions",
        folder,
        num_users,
        num_items,
        "/".join(str(len(users)) for users, _ in splits.values()),
    )
    return SplitMatrices(num_users, num_items, splits)
