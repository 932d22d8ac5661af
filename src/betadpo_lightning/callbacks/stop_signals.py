"""Ctrl-C, ``SIGTERM`` and SLURM's requeue signal end a fit at an optimizer step that every rank agrees on.

Lightning's own handling (``trainer.received_sigterm``, checked by its loops) stops the rank that received
``SIGTERM`` at its next batch, and exchanges the flag by a broadcast from rank 0 issued inside the signal handler
itself: under DDP, a signal that reaches any rank but 0 leaves the ranks in different collectives and the job hangs;
Ctrl-C raises ``KeyboardInterrupt`` wherever the process happens to be, with no checkpoint; the SLURM requeue handler
saves a checkpoint from inside the signal handler, in the middle of a step (and, under DDP, of a collective).

:class:`StopSignalConnector` is Lightning's signal connector with handlers that only record the signal. The checkpoint
callback (:class:`~betadpo_lightning.callbacks.PreferenceCheckpoint`) asks it at every optimizer step boundary and
after every validation whether any rank received one, through one ``max`` reduction over the ranks
(:func:`~betadpo_lightning.distributed.max_over_ranks`); then every rank stops at that same point: Lightning's SLURM
requeue routine runs there when requeue was asked for, ``last.ckpt`` is written, and :class:`SignalStop` ends the fit
with exit status 128 + the signal's number (130 for Ctrl-C, 143 for ``SIGTERM``). A second Ctrl-C raises
``KeyboardInterrupt`` at once: Lightning's usual abort, without a checkpoint.
"""

from __future__ import annotations

import contextlib
import os
import signal
from types import FrameType

import lightning.pytorch as pl
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.trainer.connectors.signal_connector import _SignalConnector
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from typing_extensions import override

from betadpo_lightning.distributed import max_over_ranks

__all__ = ["SignalStop", "StopSignalConnector", "install_stop_signals"]


class SignalStop(SIGTERMException):
    """A fit stopped at a clean point because of a signal; the process exits with status 128 + the signal's number.

    A :class:`~lightning.pytorch.utilities.exceptions.SIGTERMException` (so a ``SystemExit``): Lightning's callbacks
    and ``on_exception`` hooks treat it as the signal stop it is.

    Args:
        signum: the signal.
        step: the optimizer step the fit stopped after.
    """

    def __init__(self, signum: int, step: int) -> None:
        super().__init__(128 + int(signum))
        self.signum, self.step = int(signum), step


def _say(text: str) -> None:
    """Write to standard error from a signal handler (``print`` may be in the middle of a write to the same stream)."""
    with contextlib.suppress(OSError):
        os.write(2, f"{text}\n".encode())


class StopSignalConnector(_SignalConnector):
    """Lightning's signal connector, with Ctrl-C, ``SIGTERM`` and the SLURM requeue signal turned into a stop request.

    During ``fit`` the handlers only record the signal (the first Ctrl-C included; a second one raises
    ``KeyboardInterrupt``); :meth:`agreed_signal` tells, on every rank at the same point, whether one reached any
    rank. Outside ``fit`` it registers Lightning's own handlers. Forked processes (data loader workers) that inherit
    the handlers leave Ctrl-C to their parent and die of the other signals as by default.
    """

    def __init__(self, trainer: pl.Trainer) -> None:
        super().__init__(trainer)
        self.received: list[int] = []
        self._pid = os.getpid()
        self._active = False

    def stop_signals(self) -> tuple[int, ...]:
        """The signals handled, lowest priority first: Ctrl-C, ``SIGTERM``, then SLURM's requeue signal if any."""
        signals = [int(signal.SIGINT), int(signal.SIGTERM)]
        requeue = self.requeue_signal()
        if requeue is not None and requeue not in signals:
            signals.append(requeue)
        return tuple(signals)

    def requeue_signal(self) -> int | None:
        """The signal on which Lightning requeues the SLURM job (``SLURMEnvironment(auto_requeue=True)``), if any."""
        environment = self.trainer._accelerator_connector.cluster_environment
        if isinstance(environment, SLURMEnvironment) and environment.auto_requeue and environment.requeue_signal:
            return int(environment.requeue_signal)
        return None

    @override
    def register_signal_handlers(self) -> None:
        self._active = self.trainer.state.fn == TrainerFn.FITTING
        if not self._active:
            super().register_signal_handlers()
            return
        self.received_sigterm = False
        self.received = []
        self._pid = os.getpid()
        self._original_handlers = self._get_current_signal_handlers()
        for signum in self.stop_signals():
            self._register_signal(signum, self._record)

    @override
    def teardown(self) -> None:
        self._active = False
        super().teardown()

    def _record(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self._pid:  # a forked data loader worker: Ctrl-C is its parent's to handle
            if signum != signal.SIGINT:
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)
            return
        if signum == signal.SIGINT and signum in self.received:
            raise KeyboardInterrupt  # a second Ctrl-C: abort now
        if signum in self.received:
            return
        self.received.append(signum)
        rank = getattr(rank_zero_only, "rank", 0)
        if rank == 0 or signum != signal.SIGINT:  # Ctrl-C reaches every rank of a terminal: say it once
            again = "; press Ctrl-C again to abort without a checkpoint" if signum == signal.SIGINT else ""
            prefix = f"[rank {rank}] " if rank else ""
            _say(f"{prefix}Received {signal.Signals(signum).name}: stopping after the current step{again}.")

    def agreed_signal(self, trainer: pl.Trainer) -> int | None:
        """The signal every rank stops on: the highest-priority one any rank received, or ``None``.

        A collective: every rank must call it at the same point.
        """
        if not self._active:
            return None
        signals = self.stop_signals()
        mine = max((signals.index(s) + 1 for s in self.received if s in signals), default=0)
        agreed = max_over_ranks(trainer.strategy, mine, trainer.strategy.root_device)
        return signals[agreed - 1] if agreed else None

    def requeue(self, signum: int) -> None:
        """Run Lightning's SLURM requeue at the agreed point rather than inside the signal handler; every rank calls it.

        It writes ``hpc_ckpt_N.ckpt`` in ``default_root_dir``, which the requeued job resumes from when it runs
        without ``ckpt_path``, and rank 0 calls ``scontrol requeue``.
        """
        self._slurm_sigusr_handler_fn(signum, None)  # type: ignore[arg-type]

    def stop(self, signum: int) -> SignalStop:
        """The exception that ends the fit on ``signum`` (``trainer.received_sigterm`` set for ``SIGTERM``)."""
        self.received_sigterm = self.received_sigterm or signum == signal.SIGTERM
        return SignalStop(signum, self.trainer.global_step)


def install_stop_signals(trainer: pl.Trainer) -> StopSignalConnector | None:
    """Give ``trainer`` a :class:`StopSignalConnector` in place of Lightning's own (kept if it is another subclass).

    Returns:
        The connector, or ``None`` when the Trainer has a custom one (its signals are then left to it).
    """
    connector = getattr(trainer, "_signal_connector", None)
    if isinstance(connector, StopSignalConnector):
        return connector
    if type(connector) is not _SignalConnector:
        return None
    trainer._signal_connector = StopSignalConnector(trainer)
    return trainer._signal_connector
