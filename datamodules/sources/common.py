"""What every reader shares: the raw form :class:`RawData`, the data errors, and line-level reading
with errors that name the file and the line."""

from __future__ import annotations

import gzip
import html
import json
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class DataFormatError(ValueError):
    """An input file is missing, corrupt or malformed; the message names the file and line and says how to fix it."""


class MissingDataError(DataFormatError):
    """A required input file or folder does not exist."""


@dataclass
class RawData:
    """Interactions and item texts with raw string ids, as read from a source.

    - ``interactions``: ``(raw user id, raw item id, unix timestamp)`` in file order, not sorted;
      ties and duplicates are kept (sorting is stable downstream).
    - ``items``: raw item id -> ``(title, description)``, ``""`` when unknown. Readers return an
      entry for every item in ``interactions`` and for no other item.
    """

    interactions: list[tuple[str, str, int]]
    items: dict[str, tuple[str, str]]

    @property
    def num_users(self) -> int:
        return len({user for user, _, _ in self.interactions})

    @property
    def num_items(self) -> int:
        return len({item for _, item, _ in self.interactions})


def iter_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield ``(line number, text)`` of a plain or gzipped (by suffix) UTF-8 file, skipping blank lines.

    Damage to the gzip stream surfaces while iterating (at the start for a non-gzip file, at the
    end for a truncated one) and becomes a :class:`DataFormatError` that says to download again.
    """
    zipped = path.suffix == ".gz"
    opener: Callable[..., Any] = gzip.open if zipped else open
    # BadGzipFile is an OSError; other OSErrors of a plain file are not about gzip and propagate.
    damaged = (gzip.BadGzipFile, EOFError, zlib.error, OSError) if zipped else (gzip.BadGzipFile,)
    number = 0
    try:
        with opener(path, "rb") as fh:
            for number, raw in enumerate(fh, start=1):
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    raise DataFormatError(
                        f"{path}, line {number}: not valid UTF-8 ({err}); the line starts with {raw[:80]!r}. "
                        "The file is probably corrupt: delete it and download it again."
                    ) from err
                if text.strip():
                    yield number, text
    except damaged as err:
        where = f" after line {number}" if number else ""
        raise DataFormatError(
            f"{path} is not a valid gzip file (truncated download?){where}: {err} — delete it and rerun "
            "to download again"
        ) from err


def parse_error(path: Path, number: int, text: str, how: str, err: Exception) -> DataFormatError:
    return DataFormatError(
        f"{path}, line {number}: cannot parse the line as {how} ({type(err).__name__}: {err}); it starts with "
        f"{text[:80]!r}. Expected one record per line in the upstream format; the file may be corrupt or "
        "of another dataset version: delete it and download it again."
    )


def iter_json(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    for number, text in iter_lines(path):
        try:
            record = json.loads(text)
        except json.JSONDecodeError as err:
            raise parse_error(path, number, text, "JSON", err) from err
        if not isinstance(record, dict):
            raise parse_error(path, number, text, "a JSON object", TypeError(f"got {type(record).__name__}"))
        yield number, record


def record_field(record: dict[str, Any], name: str, kind: type, path: Path, number: int) -> Any:
    """``record[name]``, checked to exist, to have type ``kind`` and (for strings) to be non-empty."""
    if name not in record:
        raise DataFormatError(
            f"{path}, line {number}: the record has no {name!r} field (fields present: {sorted(record)}). "
            f"Every review needs {name!r}; the file is not in the expected upstream format."
        )
    value = record[name]
    ok = isinstance(value, kind) and not isinstance(value, bool)
    if kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or (kind is str and not value):
        raise DataFormatError(
            f"{path}, line {number}: field {name!r} must be a non-empty {kind.__name__}, got {value!r}; "
            "the file is not in the expected upstream format."
        )
    return value


def clean_text(value: Any) -> str:
    """HTML-unescape and collapse whitespace (newlines too: they would break line-based outputs)."""
    if not isinstance(value, str):
        return ""
    return " ".join(html.unescape(value).split())
