"""Amazon review data: McAuley et al.'s 2014 5-core files, and the 2018 per-category files with
A-LLMRec's preprocessing recipe, quirks included (``shared/reference/a-llmrec.md`` section 1.2)."""

from __future__ import annotations

import ast
import json
import logging
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from datamodules.sources.common import (
    DataFormatError,
    MissingDataError,
    RawData,
    clean_text,
    iter_json,
    iter_lines,
    parse_error,
    record_field,
)

log = logging.getLogger(__name__)

AMAZON2014_URL = "http://snap.stanford.edu/data/amazon/productGraph/categoryFiles"
AMAZON2018_URL = "https://datarepo.eng.ucsd.edu/mcauley_group/data/amazon_v2"

KNOWN_SIZES = {"meta_Beauty.json.gz": 99_156_148}
"""Byte sizes of upstream files where known (``shared/data/amazon/README.md``); checked on download."""


def amazon2014_files(category: str) -> dict[str, str]:
    """File name -> official URL of the 2014 5-core reviews and metadata of ``category`` (e.g. ``Beauty``)."""
    return {
        f"reviews_{category}_5.json.gz": f"{AMAZON2014_URL}/reviews_{category}_5.json.gz",
        f"meta_{category}.json.gz": f"{AMAZON2014_URL}/meta_{category}.json.gz",
    }


def amazon2018_files(category: str) -> dict[str, str]:
    """File name -> official URL of the 2018 full reviews and metadata of ``category`` (e.g. ``Luxury_Beauty``)."""
    return {
        f"{category}.json.gz": f"{AMAZON2018_URL}/categoryFiles/{category}.json.gz",
        f"meta_{category}.json.gz": f"{AMAZON2018_URL}/metaFiles2/meta_{category}.json.gz",
    }


def _url_hint(path: Path, kind: str) -> str:
    """How to get a missing raw file: its official URL when the name follows the upstream pattern."""
    name = path.name
    patterns = {
        "2014 reviews": (r"reviews_(.+)_5\.json\.gz", amazon2014_files),
        "2014 meta": (r"meta_(.+)\.json\.gz", amazon2014_files),
        "2018 reviews": (r"(.+)\.json\.gz", amazon2018_files),
        "2018 meta": (r"meta_(.+)\.json(?:\.gz)?", amazon2018_files),
    }
    pattern, files = patterns[kind]
    match = re.fullmatch(pattern, name)
    if match:
        urls = files(match.group(1))
        url = urls.get(name) or urls.get(name + ".gz")
        if url:
            return f"download it from {url} (or run with data.download=true to fetch it)"
    return "get it from the Amazon review data pages (https://cseweb.ucsd.edu/~jmcauley/datasets.html)"


def _require_file(path: Path, kind: str) -> None:
    if not path.is_file():
        raise MissingDataError(f"{path} does not exist (expected the {kind} file); {_url_hint(path, kind)}")


def _review(record: dict[str, Any], path: Path, number: int) -> tuple[str, str, int]:
    return (
        record_field(record, "reviewerID", str, path, number),
        record_field(record, "asin", str, path, number),
        record_field(record, "unixReviewTime", int, path, number),
    )


# A cheap look at a meta line's asin: metadata files hold hundreds of thousands of items of which a
# 5-core keeps a few percent, and literal_eval on every line would dominate the reading time.
_ASIN_RE = re.compile(r"""['"]asin['"]\s*:\s*['"]([^'"]+)['"]""")


def _iter_meta(
    path: Path, wanted: set[str], parse: Callable[[str], Any], how: str
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield parsed meta records whose asin is in ``wanted``, duplicates included, in file order."""
    for number, text in iter_lines(path):
        seen = _ASIN_RE.findall(text)
        if seen and not any(asin in wanted for asin in seen):
            continue
        try:
            record = parse(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as err:
            raise parse_error(path, number, text, how, err) from err
        if not isinstance(record, dict):
            raise parse_error(path, number, text, how, TypeError(f"got {type(record).__name__}, not a dict"))
        asin = record.get("asin")
        if not isinstance(asin, str) or not asin:
            raise DataFormatError(
                f"{path}, line {number}: the meta record has no 'asin' field (fields present: {sorted(record)}); "
                "the file is not in the expected upstream format."
            )
        if asin in wanted:
            yield number, record


# ----------------------------------------------------------------------------------------------
# Amazon 2014


def _item_texts(
    meta_path: Path,
    interactions: list[tuple[str, str, int]],
    parse: Callable[[str], Any],
    what: str,
    description: Callable[[Any], str],
) -> tuple[dict[str, tuple[str, str]], int]:
    """``(items, number without a meta record)``: ``(title, description)`` of every interacted item,
    in first-appearance order; ``("", "")`` for items the meta file does not describe."""
    wanted = {item for _, item, _ in interactions}
    texts: dict[str, tuple[str, str]] = {}
    for _, record in _iter_meta(meta_path, wanted, parse, what):
        texts[record["asin"]] = (clean_text(record.get("title")), description(record.get("description")))
    items = {item: texts.get(item, ("", "")) for item in dict.fromkeys(item for _, item, _ in interactions)}
    return items, len(wanted - texts.keys())


def read_amazon2014(reviews_path: Path | str, meta_path: Path | str) -> RawData:
    """Read the 2014 5-core reviews and metadata of one category.

    Reviews: gzipped JSON lines with ``reviewerID``, ``asin``, ``unixReviewTime``. Metadata: gzipped
    lines that are Python literals (single quotes), read with ``ast.literal_eval``; ``title`` and
    ``description`` (a string) may be missing. Titles and descriptions are HTML-unescaped and their
    whitespace collapsed. Items without a meta record get ``("", "")``; meta records of items
    without reviews are dropped. No filter is applied: the file is already the 5-core.
    """
    reviews_path, meta_path = Path(reviews_path), Path(meta_path)
    _require_file(reviews_path, "2014 reviews")
    _require_file(meta_path, "2014 meta")
    interactions = [_review(record, reviews_path, number) for number, record in iter_json(reviews_path)]
    items, without_meta = _item_texts(meta_path, interactions, ast.literal_eval, "a Python literal dict", clean_text)
    log.info(
        "read %s: %d interactions, %d items (%d without a meta record)",
        reviews_path,
        len(interactions),
        len(items),
        without_meta,
    )
    return RawData(interactions, items)


# ----------------------------------------------------------------------------------------------
# Amazon 2018 with A-LLMRec's recipe


def _first_description(value: Any) -> str:
    """2018 descriptions are lists of paragraphs; A-LLMRec uses element 0."""
    if isinstance(value, list):
        return clean_text(value[0]) if value else ""
    return clean_text(value)


def read_amazon2018(
    reviews_path: Path | str, meta_path: Path | str, min_count: int = 5, rating_threshold: float = 0.0
) -> RawData:
    """Read 2018 per-category reviews and metadata with A-LLMRec's preprocessing, quirks included.

    The recipe of ``pre_train/sasrec/data_preprocess.py`` (``reference/a-llmrec.md`` section 1.2):

    1. Pass 1 counts reviews per user and per item, skipping reviews with
       ``overall < rating_threshold`` (A-LLMRec: 3 for Beauty and Toys, otherwise no filter).
    2. Pass 2 keeps a review iff its user count ``>= min_count`` and its item count ``>= min_count``.
       The rating filter is *not* re-applied, so low-rated reviews of qualifying users and items
       stay. It is a single pass, not an iterative k-core: users can end with fewer than
       ``min_count`` interactions. Duplicate (user, item) reviews are kept.

    Metadata (``meta_<Cat>.json`` or ``.json.gz``, JSON lines; a later record of the same asin wins,
    as in the official dict): title, and ``description[0]`` (``""`` if the list is empty or missing).
    Deliberate fixes over the official code: titles and descriptions are HTML-unescaped and their
    whitespace collapsed (the official code keeps ``&amp;``), an empty description is ``""`` rather
    than ``"Empty description"``, and a record without a ``description`` key still gives its title.
    """
    reviews_path, meta_path = Path(reviews_path), Path(meta_path)
    if min_count < 1:
        raise ValueError(f"min_count must be >= 1, got {min_count}")
    _require_file(reviews_path, "2018 reviews")
    _require_file(meta_path, "2018 meta")

    def reviews() -> Iterator[tuple[str, str, int, float | None]]:
        for number, record in iter_json(reviews_path):
            user, item, time = _review(record, reviews_path, number)
            # The rating only matters for counting; without a threshold it need not exist.
            rating = record_field(record, "overall", float, reviews_path, number) if rating_threshold > 0 else None
            yield user, item, time, rating

    user_count: dict[str, int] = {}
    item_count: dict[str, int] = {}
    total = 0
    for user, item, _, rating in reviews():
        total += 1
        if rating is not None and rating < rating_threshold:
            continue
        user_count[user] = user_count.get(user, 0) + 1
        item_count[item] = item_count.get(item, 0) + 1
    # Pass 2 re-reads the file rather than holding every review in memory (Movies has ~8.8M).
    interactions = [
        (user, item, time)
        for user, item, time, _ in reviews()
        if user_count.get(user, 0) >= min_count and item_count.get(item, 0) >= min_count
    ]
    items, _ = _item_texts(meta_path, interactions, json.loads, "JSON", _first_description)
    log.info(
        "read %s with min_count=%d rating_threshold=%g: kept %d of %d reviews, %d users, %d items",
        reviews_path,
        min_count,
        rating_threshold,
        len(interactions),
        total,
        len({user for user, _, _ in interactions}),
        len(items),
    )
    return RawData(interactions, items)
