"""A callback that sends this process a signal after a given optimizer step, as Ctrl-C or a scheduler would."""

from __future__ import annotations

import json
import os
import signal

import lightning.pytorch as pl


class SignalAt(pl.Callback):
    """Send ``signum`` to this process ``times`` times after optimizer step ``step`` (on rank ``rank`` only).

    Args:
        step: the optimizer step after which to send it.
        signum: the signal (2: SIGINT, 15: SIGTERM).
        times: how many times (2: a second Ctrl-C).
        rank: the only global rank that receives it (``None``: every rank).
        marker: a file to write ``{"pid": ..., "rank": ...}`` to once the step is reached, instead of sending anything
            (another process then sends the signal).
    """

    def __init__(
        self, step: int, signum: int = int(signal.SIGINT), times: int = 1, rank: int | None = None, marker: str = ""
    ) -> None:
        self.step, self.signum, self.times, self.rank, self.marker = step, signum, times, rank, marker
        self.sent = False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.sent or trainer.global_step < self.step or self.rank not in (None, trainer.global_rank):
            return
        self.sent = True
        if self.marker:
            with open(f"{self.marker}.{trainer.global_rank}", "w") as file:
                json.dump({"pid": os.getpid(), "rank": trainer.global_rank, "step": trainer.global_step}, file)
            return
        for _ in range(self.times):
            os.kill(os.getpid(), self.signum)
