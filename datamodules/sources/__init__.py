"""Readers that turn upstream data files into one raw form, and the dispatch from a :class:`DataConfig`.

Sources (``DataConfig.source``), one module each:

- ``amazon2014`` / ``amazon2018`` (:mod:`.amazon`): McAuley et al.'s 2014 5-core reviews and
  metadata, or the 2018 per-category files with A-LLMRec's preprocessing recipe.
- ``prepared`` (:mod:`.prepared`): a folder with ``interactions.csv`` and ``items.csv``.
- ``rlmrec`` (:mod:`.rlmrec`): RLMRec's pickled ``trn_mat.pkl``, ``val_mat.pkl``, ``tst_mat.pkl``
  (the data FACE uses), read into :class:`SplitMatrices`, a fixed split with integer ids.
- ``synthetic`` (:mod:`.synthetic`): a seeded, learnable generator for tests and smoke runs.

Everything here is pure Python (no Lightning, no OmegaConf, no pandas; scipy only for ``rlmrec``,
imported there) so tests import it quickly. Ids stay raw strings; mapping them to integers is
``preprocess.remap_ids``' job (``rlmrec`` ids are the matrix indices, mapped by ``preprocess_splits``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from datamodules.config import DataConfig
from datamodules.download import download
from datamodules.sources.amazon import (
    AMAZON2014_URL,
    AMAZON2018_URL,
    KNOWN_SIZES,
    amazon2014_files,
    amazon2018_files,
    read_amazon2014,
    read_amazon2018,
)
from datamodules.sources.common import DataFormatError, MissingDataError, RawData, clean_text
from datamodules.sources.prepared import INTERACTION_COLUMNS, ITEM_COLUMNS, read_prepared
from datamodules.sources.rlmrec import RLMREC_EXPECTED, RLMREC_FILES, SPLITS, SplitMatrices, read_rlmrec
from datamodules.sources.synthetic import SYNTHETIC_STRIDES, make_synthetic

READER_VERSION = 1
"""Bump when a reader's output changes for the same input, so processed caches are rebuilt."""

__all__ = [
    "AMAZON2014_URL",
    "AMAZON2018_URL",
    "INTERACTION_COLUMNS",
    "ITEM_COLUMNS",
    "KNOWN_SIZES",
    "READER_VERSION",
    "RLMREC_FILES",
    "SPLITS",
    "SYNTHETIC_STRIDES",
    "DataFormatError",
    "MissingDataError",
    "RawData",
    "SplitMatrices",
    "amazon2014_files",
    "amazon2018_files",
    "clean_text",
    "input_paths",
    "make_synthetic",
    "raw_folder",
    "read_amazon2014",
    "read_amazon2018",
    "read_prepared",
    "read_rlmrec",
    "resolve_raw",
    "source_fingerprint",
]


def raw_folder(cfg: DataConfig) -> Path:
    """Where the raw upstream files of ``cfg`` live: ``data_dir``, else ``<root>/raw/<name>``."""
    return Path(cfg.data_dir) if cfg.data_dir else Path(cfg.root) / "raw" / cfg.name


def _prepared_override(cfg: DataConfig) -> Path | None:
    """The prepared folder that replaces the raw files of an Amazon source, if ``data_dir`` is one."""
    if cfg.data_dir and (Path(cfg.data_dir) / "interactions.csv").is_file():
        return Path(cfg.data_dir)
    return None


def _raw_files(cfg: DataConfig) -> dict[str, tuple[Path, str]]:
    """Role (``reviews``/``meta``) -> (local path, official URL) for an Amazon source."""
    if not cfg.category:
        raise ValueError(
            f"data.category is empty but data.source={cfg.source} needs it to name the upstream files; set "
            "data.category=<Cat>, e.g. Beauty (2014) or Luxury_Beauty (2018), or point data.data_dir at a "
            "prepared folder"
        )
    folder = raw_folder(cfg)
    if cfg.source == "amazon2014":
        (reviews, reviews_url), (meta, meta_url) = amazon2014_files(cfg.category).items()
        return {"reviews": (folder / reviews, reviews_url), "meta": (folder / meta, meta_url)}
    (reviews, reviews_url), (meta, meta_url) = amazon2018_files(cfg.category).items()
    # A-LLMRec's instructions gunzip the meta file; accept that form when it is there.
    plain_meta = folder / meta.removesuffix(".gz")
    meta_path = plain_meta if plain_meta.is_file() else folder / meta
    return {"reviews": (folder / reviews, reviews_url), "meta": (meta_path, meta_url)}


def input_paths(cfg: DataConfig) -> dict[str, Path]:
    """The files :func:`resolve_raw` reads for ``cfg`` (none for ``synthetic``); they may not exist yet."""
    if cfg.source == "synthetic":
        return {}
    if cfg.source == "rlmrec":
        return {split: raw_folder(cfg) / name for split, name in RLMREC_FILES.items()}
    if cfg.source == "prepared":
        if not cfg.data_dir:
            raise ValueError(
                "data.source=prepared needs a folder: pass data.data_dir=<folder> or DATA_DIR=<folder> "
                "(a folder with interactions.csv and items.csv)"
            )
        folder = Path(cfg.data_dir)
    else:
        folder = _prepared_override(cfg)
        if folder is None:
            return {role: path for role, (path, _) in _raw_files(cfg).items()}
    return {"interactions": folder / "interactions.csv", "items": folder / "items.csv"}


def resolve_raw(cfg: DataConfig) -> RawData | SplitMatrices:
    """Read the raw data that ``cfg`` names, downloading missing Amazon files when ``cfg.download``.

    For ``amazon2014``/``amazon2018`` a ``data_dir`` that holds ``interactions.csv`` is read as a
    prepared folder, as is (the recipe is assumed applied already: A-LLMRec's single-pass filter
    is not idempotent, so it must not run twice). ``rlmrec`` gives :class:`SplitMatrices` (nothing
    to download: RLMRec's archive is on Google Drive and archive.org).
    """
    if cfg.source == "synthetic":
        return make_synthetic(
            cfg.synthetic_users, cfg.synthetic_items, cfg.synthetic_min_len, cfg.synthetic_max_len, cfg.synthetic_seed
        )
    if cfg.source == "rlmrec":
        folder = raw_folder(cfg)
        if not cfg.data_dir and not folder.is_dir():
            raise MissingDataError(
                f"data={cfg.name} (source rlmrec) has no data.data_dir and {folder} does not exist; expected "
                f"{RLMREC_EXPECTED}. Pass data.data_dir=<folder> or DATA_DIR=<folder>."
            )
        return read_rlmrec(folder)
    paths = input_paths(cfg)
    if "interactions" in paths:
        return read_prepared(paths["interactions"].parent)
    files = _raw_files(cfg)
    missing = [(path, url) for path, url in files.values() if not path.is_file()]
    if missing and not cfg.download:
        listing = "; ".join(f"{path} (from {url})" for path, url in missing)
        raise MissingDataError(
            f"missing raw file(s) for data={cfg.name}: {listing}. Download them there, rerun with "
            "data.download=true, or point data.data_dir at a prepared folder."
        )
    for path, url in missing:
        download(url, path, size=KNOWN_SIZES.get(path.name) if cfg.source == "amazon2014" else None)
    reviews, meta = files["reviews"][0], files["meta"][0]
    if cfg.source == "amazon2014":
        return read_amazon2014(reviews, meta)
    return read_amazon2018(reviews, meta, cfg.min_count, cfg.rating_threshold)


def _file_stamp(path: Path) -> dict[str, Any]:
    stat = path.stat() if path.is_file() else None
    return {
        "path": str(path.resolve()),
        "size": stat.st_size if stat else None,
        "mtime_ns": stat.st_mtime_ns if stat else None,
    }


def source_fingerprint(cfg: DataConfig) -> dict[str, Any]:
    """What a processed cache of ``cfg`` depends on, as a JSON-serialisable dict.

    Two configs with equal fingerprints give the same processed data: the source and reader
    version, the input files (absolute path, size, mtime; ``None`` for files not there yet), the
    recipe parameters that the reader applies, and the evaluation-list seed and size. Nothing is
    downloaded or read.
    """
    fingerprint: dict[str, Any] = {
        "reader_version": READER_VERSION,
        "source": cfg.source,
        "eval_seed": cfg.eval_seed,
        "num_eval_negatives": cfg.num_eval_negatives,
    }
    if cfg.source == "synthetic":
        fingerprint["synthetic"] = {
            "users": cfg.synthetic_users,
            "items": cfg.synthetic_items,
            "min_len": cfg.synthetic_min_len,
            "max_len": cfg.synthetic_max_len,
            "seed": cfg.synthetic_seed,
        }
        return fingerprint
    paths = input_paths(cfg)
    fingerprint["inputs"] = {role: _file_stamp(path) for role, path in sorted(paths.items())}
    if cfg.source in ("amazon2014", "amazon2018"):
        fingerprint["category"] = cfg.category
        fingerprint["prepared_override"] = "interactions" in paths
    if cfg.source == "amazon2018" and "interactions" not in paths:
        fingerprint["recipe"] = {"min_count": cfg.min_count, "rating_threshold": float(cfg.rating_threshold)}
    return fingerprint
