"""Random-number state in checkpoints, so that a resumed run continues as if it had never stopped."""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import numpy as np
import torch


class RandomStateCallback(L.Callback):
    """Saves the global random states (Python, NumPy, torch CPU and CUDA) with every checkpoint and
    restores them on resume.

    Lightning checkpoints the model, optimisers, loops and callbacks but not these states, so dropout
    masks and the loaders' base seeds after a resume would differ from an uninterrupted run. The
    state is taken when the checkpoint is written (at the end of an epoch's validation), which is
    exactly where the resumed run picks up.
    """

    def state_dict(self) -> dict[str, Any]:
        # Plain lists and tensors only: checkpoints load with torch.load(weights_only=True).
        name, keys, pos, has_gauss, cached = np.random.get_state()
        state: dict[str, Any] = {
            "python": random.getstate(),
            "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        random.setstate(state_dict["python"])
        name, keys, pos, has_gauss, cached = state_dict["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
        torch.set_rng_state(state_dict["torch"])
        if "cuda" in state_dict and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])
