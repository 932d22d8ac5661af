"""Two CPU processes (gloo, ddp_spawn): identical β and masks on every rank, equality with one process."""

from __future__ import annotations

import functools
import sys

import lightning.pytorch as pl
import pytest
import torch

from betadpo_lightning.callbacks import DynamicBetaCallback
from betadpo_lightning.core.controllers import BetaDPOController
from betadpo_lightning.training.module import PreferenceModule
from helpers.ddp_checks import AccuracyCheck, CrossRankCheck
from helpers.protocol_module import PairScorer, cat_pairs
from helpers.tiny import TINY_LLAMA, RandomPairsData
from helpers.trainers import quiet_trainer

pytestmark = [
    pytest.mark.distributed,
    pytest.mark.slow,
    pytest.mark.timeout(240),
    pytest.mark.skipif(sys.platform == "win32", reason="gloo process groups in spawned processes"),
]

CONTROLLER = {"beta": 0.2, "alpha": 0.5, "rho": 0.25, "momentum": 0.8, "seed": 3}


def _ddp_trainer(tmp_path, max_steps, callbacks, **kwargs):
    return quiet_trainer(tmp_path, max_steps, callbacks, devices=2, strategy="ddp_spawn", **kwargs)


def test_uneven_ranks_match_the_single_process_step(tmp_path):
    """Rank 0 holds 3 pairs, rank 1 holds 5. On every step and rank (asserted inside the workers): β and this rank's
    slice of the keep-mask equal a single controller stepped on the 8 concatenated margins, and the DDP-averaged
    gradient equals the gradient of the mean loss over the kept pairs of both ranks. The logged reward accuracy is
    the one over all 8 pairs of every step."""
    module = PairScorer(sizes=(3, 5), mirror=CONTROLLER)
    trainer = _ddp_trainer(
        tmp_path,
        4,
        [DynamicBetaCallback(BetaDPOController(**CONTROLLER)), CrossRankCheck(), AccuracyCheck()],
        limit_val_batches=0,
        log_every_n_steps=4,
    )
    trainer.fit(module)
    assert trainer.callback_metrics["checked_steps"].item() == 4


def test_preference_module_under_ddp(tmp_path):
    """The real module on a tiny Llama: two ranks agree on β and the controller state at every step."""
    pl.seed_everything(0)
    module = PreferenceModule(model_config=TINY_LLAMA, optimizer=functools.partial(torch.optim.AdamW, lr=1e-3))
    trainer = _ddp_trainer(
        tmp_path, 3, [DynamicBetaCallback(BetaDPOController(**CONTROLLER)), CrossRankCheck()], log_every_n_steps=1
    )
    trainer.fit(module, datamodule=RandomPairsData(size=16, batch_size=3))
    assert trainer.callback_metrics["checked_steps"].item() == 3
    assert torch.isfinite(trainer.callback_metrics["train/loss"])


class _Report(pl.Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # the last value is kept
        pl_module.log("eps_beta", torch.tensor(pl_module.beta_provider.controller.current_beta), batch_size=1)
        pl_module.log("eps_checked", float(pl_module.checked_steps), batch_size=1)


def test_epsilon_dpo_two_ranks_equal_the_single_process_mean(tmp_path):
    """Uneven ranks (3 and 5 pairs), 2 micro-batches per optimizer step: on every rank and micro-batch the per-pair
    β equals a single ε-DPO controller fed the 8 concatenated pairs, and β after each optimizer step is updated with
    the mean sign over all micro-batches and ranks (asserted inside the workers)."""
    from betadpo_lightning.core.controllers import EpsilonBetaController
    from helpers.protocol_module import PerturbedScorer

    module = PerturbedScorer(sizes=(3, 5), epsilon=0.2, accumulate=2)
    trainer = _ddp_trainer(
        tmp_path,
        3,
        [DynamicBetaCallback(EpsilonBetaController(beta=0.2, epsilon=0.2)), _Report()],
        limit_val_batches=0,
        accumulate_grad_batches=2,
    )
    trainer.fit(module)
    assert trainer.callback_metrics["eps_checked"].item() == 6
    beta = trainer.callback_metrics["eps_beta"].item()
    single = PerturbedScorer(sizes=(3, 5))
    controller = single.epsilon_mirror
    for batch_idx in range(6):  # the same global batches in one process
        everyone = cat_pairs([single.perturbed(batch_idx, r, single.w.weight).detach() for r in range(2)])
        controller.step(torch.zeros(8), everyone)
        if batch_idx % 2 == 1:
            controller.on_optimizer_step()
    assert beta == pytest.approx(controller.current_beta, rel=1e-6)
    assert beta != 0.2


def test_the_process_group_is_closed_at_exit(tmp_path):
    """A Gloo group alive at interpreter shutdown can abort a rank after a successful run; the module's and the
    callback's setup register its destruction at exit (checked by running the exit handlers in a fresh process)."""
    import subprocess

    code = (
        "import atexit, torch.distributed as dist\n"
        "from betadpo_lightning.models.sharding import close_process_group_at_exit\n"
        f"dist.init_process_group('gloo', init_method='file://{tmp_path / 'store'}', rank=0, world_size=1)\n"
        "close_process_group_at_exit(); close_process_group_at_exit()\n"
        "atexit._run_exitfuncs()\n"
        "print('initialized after exit handlers:', dist.is_initialized())\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "initialized after exit handlers: False" in result.stdout
