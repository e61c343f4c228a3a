"""Wall-clock timing of training epochs and evaluation, for ``metrics.json`` and benchmarks."""

from __future__ import annotations

import time

import lightning as L


class TimingCallback(L.Callback):
    """Measures training-epoch seconds (validation excluded), evaluation seconds and fit seconds.

    ``summary()`` gives ``train_seconds`` (the whole fit, validation included), ``epochs``
    (completed training epochs), ``seconds_per_epoch`` (mean training-only epoch time),
    ``val_seconds_per_epoch`` and ``test_seconds``.
    """

    def __init__(self) -> None:
        self.epoch_times: list[float] = []
        self.val_times: list[float] = []
        self.fit_seconds = 0.0
        self.test_seconds = 0.0
        self._fit_start = self._epoch_start = self._val_start = self._test_start = None

    def on_fit_start(self, trainer, pl_module) -> None:
        self._fit_start = time.perf_counter()

    def on_fit_end(self, trainer, pl_module) -> None:
        if self._fit_start is not None:
            self.fit_seconds = time.perf_counter() - self._fit_start

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._epoch_start = time.perf_counter()

    def _close_epoch(self) -> None:
        if self._epoch_start is not None:
            self.epoch_times.append(time.perf_counter() - self._epoch_start)
            self._epoch_start = None

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        # Validation at the end of an epoch runs before on_train_epoch_end: close the epoch here.
        self._close_epoch()
        self._val_start = time.perf_counter()

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if self._val_start is not None and not trainer.sanity_checking:
            self.val_times.append(time.perf_counter() - self._val_start)
        self._val_start = None

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._close_epoch()

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self._test_start = time.perf_counter()

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        if self._test_start is not None:
            self.test_seconds = time.perf_counter() - self._test_start

    def summary(self) -> dict[str, float | int]:
        epochs = len(self.epoch_times)
        return {
            "train_seconds": round(self.fit_seconds, 3),
            "epochs": epochs,
            "seconds_per_epoch": round(sum(self.epoch_times) / epochs, 3) if epochs else 0.0,
            "val_seconds_per_epoch": round(sum(self.val_times) / len(self.val_times), 3) if self.val_times else 0.0,
            "test_seconds": round(self.test_seconds, 3),
        }
