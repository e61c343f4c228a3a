"""The processed-dataset cache: built once from the raw source, written atomically, reused after.

Layout: ``<root>/processed/<name>/dataset.pt`` (tensors and texts) and ``meta.json`` (what it was
built from, and statistics). ``meta.json`` is written last, so a cache without it, or whose
fingerprint differs from the current config, is rebuilt.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock

from datamodules.config import DataConfig
from datamodules.preprocess import ProcessedData, preprocess, preprocess_splits
from datamodules.sources import SplitMatrices, resolve_raw, source_fingerprint

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
"""Bump when the stored dict changes (2: ``split_counts`` added, candidates may be None)."""


def processed_dir(cfg: DataConfig) -> Path:
    return Path(cfg.root) / "processed" / cfg.name


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def atomic_write_bytes(path: Path, write: Any) -> None:
    """Call ``write(file_object)`` on a temporary file next to ``path``, then rename it into place.

    A crash or an exception leaves either the old file or none, never half of a new one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, lambda fh: fh.write((json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()))


def _expected_meta(cfg: DataConfig) -> dict[str, Any]:
    return {"format_version": FORMAT_VERSION, "source": source_fingerprint(cfg)}


def is_cached(cfg: DataConfig) -> bool:
    folder = processed_dir(cfg)
    meta_path = folder / "meta.json"
    if not (folder / "dataset.pt").is_file() or not meta_path.is_file():
        return False
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError:
        return False
    return {k: meta.get(k) for k in ("format_version", "source")} == _expected_meta(cfg)


def ensure_processed(cfg: DataConfig) -> Path:
    """Build the processed dataset for ``cfg`` unless an up-to-date cache exists; return its folder."""
    folder = processed_dir(cfg)
    if is_cached(cfg):
        log.info("using processed dataset %s", folder)
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    # One builder at a time (DDP ranks, parallel sweep agents): the others wait, then reuse its cache.
    with FileLock(str(folder.parent / f".{cfg.name}.lock")):
        if is_cached(cfg):
            return folder
        log.info("preprocessing %s (source %s) into %s", cfg.name, cfg.source, folder)
        raw = resolve_raw(cfg)
        if isinstance(raw, SplitMatrices):
            data = preprocess_splits(raw)
        else:
            data = preprocess(raw.interactions, raw.items, cfg.num_eval_negatives, cfg.eval_seed)
        # meta.json is removed first and written last: it is the marker of a complete cache.
        (folder / "meta.json").unlink(missing_ok=True)
        atomic_write_bytes(folder / "dataset.pt", lambda fh: torch.save(data.to_dict(), fh))
        atomic_write_json(folder / "meta.json", {**_expected_meta(cfg), "stats": data.stats})
    return folder


def load_processed(cfg: DataConfig) -> ProcessedData:
    folder = processed_dir(cfg)
    if not is_cached(cfg):
        raise FileNotFoundError(
            f"no up-to-date processed dataset in {folder}; call prepare_data() first (the entry point does)"
        )
    return ProcessedData.from_dict(torch.load(folder / "dataset.pt", weights_only=True))
