"""Run-directory artifacts: ``config.yaml``, ``weights.pt`` and ``metrics.json``, written atomically."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from datamodules.cache import atomic_write_bytes, atomic_write_json


def write_metrics_json(path: Path, metrics: dict[str, Any]) -> None:
    """One flat JSON object, keys sorted; tensors become floats, non-finite values ``null``."""
    flat: dict[str, Any] = {}
    for key, value in metrics.items():
        if isinstance(value, torch.Tensor):
            value = value.item()
        if isinstance(value, float) and not math.isfinite(value):
            value = None
        flat[key] = value
    atomic_write_json(path, flat)


def write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, lambda fh: fh.write(text.encode()))


def write_weights(path: Path, state_dict: dict[str, torch.Tensor]) -> None:
    atomic_write_bytes(path, lambda fh: torch.save(state_dict, fh))


def read_metrics_json(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())
