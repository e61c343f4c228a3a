"""Bring-your-own data: a folder with ``interactions.csv`` and ``items.csv``."""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterator
from pathlib import Path

from datamodules.sources.common import DataFormatError, MissingDataError, RawData

log = logging.getLogger(__name__)

INTERACTION_COLUMNS = ("user_id", "item_id", "timestamp")
ITEM_COLUMNS = ("item_id", "title")


def _csv_header(reader: Iterator[list[str]], path: Path, required: tuple[str, ...]) -> dict[str, int]:
    """Read a CSV header and map its column names to indices, or explain which required ones are missing."""
    header = [name.strip() for name in next(reader, [])]
    missing = [name for name in required if name not in header]
    if missing:
        raise DataFormatError(
            f"{path}, line 1: missing required column(s) {missing}; found {header}. The first line must be a "
            f"header naming at least {list(required)}: add or rename the column(s)."
        )
    return {name: header.index(name) for name in header}


def _cell(row: list[str], index: int, path: Path, line: int, name: str) -> str:
    if index >= len(row):
        raise DataFormatError(
            f"{path}, line {line}: the row has {len(row)} field(s) but column {name!r} is field {index + 1}; "
            "fix the row (a missing comma or quote?)."
        )
    return row[index].strip()


def read_prepared(folder: Path | str) -> RawData:
    """Read a prepared folder: ``interactions.csv`` and ``items.csv``, both with a header row.

    ``interactions.csv`` needs ``user_id,item_id,timestamp`` (integer unix time; more columns are
    allowed and ignored), rows in the order to keep for equal timestamps. ``items.csv`` needs
    ``item_id,title`` and may have ``description``. Every interacted item must be in ``items.csv``;
    items listed there without interactions are dropped.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingDataError(
            f"prepared folder {folder} does not exist; expected a folder with interactions.csv "
            "(user_id,item_id,timestamp) and items.csv (item_id,title[,description]). Pass "
            "data.data_dir=<folder> or DATA_DIR=<folder>."
        )
    items_path, inter_path = folder / "items.csv", folder / "interactions.csv"
    for path in (inter_path, items_path):
        if not path.is_file():
            raise MissingDataError(
                f"{path} does not exist; a prepared folder needs interactions.csv (user_id,item_id,timestamp) "
                "and items.csv (item_id,title[,description]). Pass data.data_dir=<folder> or DATA_DIR=<folder>."
            )

    texts: dict[str, tuple[str, str]] = {}
    # utf-8-sig: tolerate the byte-order mark that spreadsheet programs write.
    with open(items_path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        cols = _csv_header(reader, items_path, ITEM_COLUMNS)
        i_id, i_title, i_desc = cols["item_id"], cols["title"], cols.get("description")
        for row in reader:
            if not row:
                continue
            line = reader.line_num
            item = _cell(row, i_id, items_path, line, "item_id")
            if not item:
                raise DataFormatError(f"{items_path}, line {line}: empty item_id; every row needs an item id.")
            if item in texts:
                raise DataFormatError(
                    f"{items_path}, line {line}: duplicate item_id {item!r}; each item must be listed once "
                    "(remove or merge the duplicate row)."
                )
            title = _cell(row, i_title, items_path, line, "title")
            description = row[i_desc].strip() if i_desc is not None and i_desc < len(row) else ""
            texts[item] = (title, description)

    interactions: list[tuple[str, str, int]] = []
    with open(inter_path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        cols = _csv_header(reader, inter_path, INTERACTION_COLUMNS)
        c_user, c_item, c_time = cols["user_id"], cols["item_id"], cols["timestamp"]
        for row in reader:
            if not row:
                continue
            line = reader.line_num
            user = _cell(row, c_user, inter_path, line, "user_id")
            item = _cell(row, c_item, inter_path, line, "item_id")
            stamp = _cell(row, c_time, inter_path, line, "timestamp")
            if not user or not item:
                which = "user_id" if not user else "item_id"
                raise DataFormatError(
                    f"{inter_path}, line {line}: empty {which}; every row needs a user and an item id."
                )
            try:
                time = int(stamp)
            except ValueError:
                raise DataFormatError(
                    f"{inter_path}, line {line}: timestamp {stamp!r} is not an integer; expected unix seconds "
                    "(e.g. 1318896000). Convert dates to unix time."
                ) from None
            if item not in texts:
                raise DataFormatError(
                    f"{inter_path}, line {line}: item_id {item!r} is not in {items_path}; add a row for it to "
                    "items.csv (the title may be empty) or remove the interaction."
                )
            interactions.append((user, item, time))
    if not interactions:
        raise DataFormatError(
            f"{inter_path} has no interaction rows after its header; add one row per interaction "
            "(user_id,item_id,timestamp), or point data.data_dir at another folder."
        )
    items = {item: texts[item] for item in dict.fromkeys(item for _, item, _ in interactions)}
    if len(items) < len(texts):
        log.info("%s: %d items without interactions dropped", items_path, len(texts) - len(items))
    log.info("read %s: %d interactions, %d items", folder, len(interactions), len(items))
    return RawData(interactions, items)
