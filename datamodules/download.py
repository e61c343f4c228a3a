"""Fetch one file over HTTP(S) with a progress bar, resume and an atomic rename.

Only the standard library and tqdm: this module is imported by the data pipeline, which tests load
without Lightning.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import urllib.error
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
USER_AGENT = "cf-llm-rec-downloader/1.0 (+urllib)"


class DownloadError(RuntimeError):
    """A download failed; the message names the URL and the ways around it."""


def _how_to_fix(url: str, dest: Path) -> str:
    return (
        f"Check the network connection and that {url} is reachable, or download the file by hand to "
        f"{dest}, or point data.data_dir at a prepared folder (interactions.csv + items.csv)."
    )


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _verify(path: Path, url: str, dest: Path, sha256: str | None, size: int | None) -> None:
    """Check size and sha256 of ``path``; delete it and raise on a mismatch."""
    if size is not None and path.stat().st_size != size:
        got = path.stat().st_size
        path.unlink()
        raise DownloadError(
            f"{url} gave {got} bytes but {size} were expected; the file was deleted. " + _how_to_fix(url, dest)
        )
    if sha256 is not None:
        got = sha256_of(path)
        if got != sha256.lower():
            path.unlink()
            raise DownloadError(
                f"sha256 mismatch for {url}: expected {sha256.lower()}, got {got}; the file was deleted "
                "(a changed or corrupted upstream file). " + _how_to_fix(url, dest)
            )


def download(
    url: str,
    dest: Path | str,
    sha256: str | None = None,
    *,
    size: int | None = None,
    timeout: float = 60.0,
    progress: bool = True,
) -> Path:
    """Download ``url`` to ``dest`` and return ``dest``.

    Bytes go to ``<dest>.part`` first, which is renamed onto ``dest`` only when complete and
    verified, so ``dest`` is never half-written. An existing ``.part`` is resumed with an HTTP
    ``Range`` request; a server that ignores ``Range`` (status 200) makes the download start over.
    ``sha256`` and ``size`` are checked when given; on a mismatch the file is deleted. When
    ``dest`` already exists nothing is fetched (the offline path), it is only verified.

    Raises:
        DownloadError: on any network, HTTP or verification failure; a partial ``.part`` from a
            network failure is kept so that a rerun resumes.
    """
    dest = Path(dest)
    if dest.exists():
        _verify(dest, url, dest, sha256, size)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_suffix(dest.suffix + ".part")
    _fetch(url, dest, part, timeout, progress, allow_restart=True)
    _verify(part, url, dest, sha256, size)
    os.replace(part, dest)
    log.info("downloaded %s (%d bytes)", dest, dest.stat().st_size)
    return dest


def _fetch(url: str, dest: Path, part: Path, timeout: float, progress: bool, allow_restart: bool) -> None:
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        log.info("resuming %s at byte %d", url, offset)
    else:
        log.info("downloading %s -> %s", url, dest)
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            if offset and response.status != 206:
                # The server ignored the Range header and sends the whole file: start over.
                offset = 0
            length = response.headers.get("Content-Length")
            total = offset + int(length) if length is not None else None
            with (
                open(part, "ab" if offset else "wb") as fh,
                tqdm(
                    total=total,
                    initial=offset,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    desc=dest.name,
                    disable=not progress,
                ) as bar,
            ):
                for chunk in iter(lambda: response.read(CHUNK_BYTES), b""):
                    fh.write(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset and allow_restart:
            # "Range not satisfiable": the .part is not a prefix of the current file; start over once.
            part.unlink()
            _fetch(url, dest, part, timeout, progress, allow_restart=False)
            return
        raise DownloadError(
            f"download of {url} failed: HTTP {err.code} {err.reason}. " + _how_to_fix(url, dest)
        ) from err
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as err:
        kept = f" The partial file {part} is kept; rerun to resume." if part.exists() else ""
        raise DownloadError(f"download of {url} failed: {err}.{kept} " + _how_to_fix(url, dest)) from err
    got = part.stat().st_size
    if total is not None and got != total:
        raise DownloadError(
            f"download of {url} stopped at {got} of {total} bytes; {part} is kept, rerun to resume. "
            + _how_to_fix(url, dest)
        )
