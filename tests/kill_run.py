"""A stage run through the entry point that kills its own process, as a crash or ``kill -9`` would
(a script, not a test; started by ``tests/test_resume.py``).

    python tests/kill_run.py EPOCH key=value ...

The process sends itself SIGKILL after the first training batch of epoch ``EPOCH`` (0-based), so
the checkpoint of the epoch before is on disk and nothing gets the chance to clean up.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    import lightning as L

    import lightning_modules.training as training
    from lightning_modules.run import main as run_main

    epoch = int(sys.argv[1])

    class Kill(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if trainer.current_epoch == epoch:
                os.kill(os.getpid(), signal.SIGKILL)

    build = training.build_trainer

    def build_with_kill(cfg, run_dir, callbacks, max_epochs, validate=True):
        return build(cfg, run_dir, [*callbacks, Kill()], max_epochs, validate)

    training.build_trainer = build_with_kill
    sys.exit(run_main(sys.argv[2:]))


if __name__ == "__main__":
    main()
