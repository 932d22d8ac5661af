"""The command line: ``python cli.py fit --config configs/quickstart.yaml`` (or the ``betadpo`` script)."""

from __future__ import annotations

import os
import sys
from argparse import ArgumentError
from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger
from typing_extensions import override

from betadpo_lightning.callbacks import DynamicBetaCallback
from betadpo_lightning.cli_errors import MissingCheckpointError, explain, report
from betadpo_lightning.cli_options import config_error, option_names, parse_error
from betadpo_lightning.console import quiet_known_noise
from betadpo_lightning.data import PreferenceDataModule
from betadpo_lightning.module import PreferenceModule
from betadpo_lightning.progress import StepProgressBar
from betadpo_lightning.run_summary import RunSummary

__all__ = ["DYNAMIC_BETA", "BetaDPOCLI", "console_main", "main"]

DYNAMIC_BETA = "dynamic_beta"
"""The top-level YAML section of :class:`DynamicBetaCallback`."""

LINKS = {f"{DYNAMIC_BETA}.controller.init_args.beta": "model.beta"}
"""Options filled from another one (target: source); β0 is written once, as ``model.beta``."""

RENAMED = {
    "--optimizer": "the optimizer is model.optimizer, e.g. --model.optimizer torch.optim.SGD --model.optimizer.lr 0.01",
    "--lr_scheduler": "the scheduler is model.scheduler, e.g. --model.scheduler torch.optim.lr_scheduler.ConstantLR",
}
"""LightningCLI options that this CLI does not have, and what to use instead."""


class BetaDPOCLI(LightningCLI):
    """LightningCLI for :class:`PreferenceModule` + :class:`PreferenceDataModule`, with the β callback as a section.

    Besides ``trainer``, ``model`` (with ``optimizer``/``scheduler`` and ``reference`` as ``class_path`` +
    ``init_args``) and ``data``, the YAML has ``dynamic_beta`` for :class:`DynamicBetaCallback`, whose
    ``controller`` is chosen by ``class_path`` (``BetaDPOController`` by default, ``ConstantBetaController``,
    ...). ``dynamic_beta: null`` trains without the callback (fixed ``model.beta``; the module logs the metrics).

    Subcommands: ``fit``, ``validate`` and ``test`` (there is nothing to ``predict``). Create it with
    ``auto_configure_optimizers=False`` (as :func:`main` does): the optimizer and scheduler are ``model.optimizer``
    and ``model.scheduler``, and the top-level ``--optimizer`` / ``--lr_scheduler`` get an error saying so.

    Without a ``trainer.logger``, metrics go to a CSV logger in ``<trainer.default_root_dir>/logs/version_N/``, so
    ``--trainer.default_root_dir`` moves the logs together with the checkpoints of
    :class:`~betadpo_lightning.callbacks.PreferenceCheckpoint` (``<default_root_dir>/checkpoints``). Unless the
    config has its own, the Trainer gets a :class:`~betadpo_lightning.progress.StepProgressBar` (with
    ``enable_progress_bar``) and a :class:`~betadpo_lightning.run_summary.RunSummary`. ``--ckpt_path last`` with no
    ``last.ckpt`` is an error (Lightning would train from scratch).

    Written once: β0 is ``model.beta`` (linked into the controller's ``beta``); the tokenizer is the model's
    (``model.model_name_or_path``) unless ``data.tokenizer`` names another one.

    Mistakes are raised as :class:`~betadpo_lightning.cli_errors.CLIError` naming the option (parse errors, and
    values refused while the classes are built), which :func:`main` prints in a few lines.
    """

    @staticmethod
    @override
    def subcommands() -> dict[str, set[str]]:
        commands = LightningCLI.subcommands()
        del commands["predict"]  # a preference model has nothing to predict; sample with betadpo_lightning.sample
        return commands

    @override
    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        kwargs.setdefault("exit_on_error", False)  # errors are raised, and explained by `main` in a few lines
        return super().init_parser(**kwargs)

    @override
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(DynamicBetaCallback, DYNAMIC_BETA, required=False)
        parser.set_defaults(
            {f"{DYNAMIC_BETA}.controller": {"class_path": "betadpo_lightning.controllers.BetaDPOController"}}
        )
        for target, source in LINKS.items():
            parser.link_arguments(source, target)

    @override
    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as error:
            words = list(sys.argv[1:] if args is None else args) if isinstance(args, list | tuple | None) else []
            parsers = getattr(self, "_subcommand_parsers", {})
            subparser = next((parsers[word] for word in words if word in parsers), parser)
            raise parse_error(str(error), option_names(subparser), RENAMED) from error

    @override
    def before_instantiate_classes(self) -> None:
        config = self._section()
        data, model = config.get("data"), config.get("model")
        if data is not None and model is not None and data.get("tokenizer") is None:
            data["tokenizer"] = model.get("model_name_or_path")

    @override
    def instantiate_classes(self) -> None:
        config = self._section()
        self.beta_callback_disabled = DYNAMIC_BETA in config and config[DYNAMIC_BETA] is None
        if self.beta_callback_disabled:  # jsonargparse cannot instantiate a null group: drop it meanwhile
            del config[DYNAMIC_BETA]
        try:
            super().instantiate_classes()
        except Exception as error:
            groups = {"model": self._model_class, "data": self._datamodule_class, "trainer": self.trainer_class}
            groups[DYNAMIC_BETA] = DynamicBetaCallback
            raise config_error(error, config, groups, LINKS) from error
        finally:
            if self.beta_callback_disabled:
                config[DYNAMIC_BETA] = None

    @override
    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        keys = self._parser(self.subcommand).callback_keys
        skip = {DYNAMIC_BETA} if getattr(self, "beta_callback_disabled", False) else set()
        callbacks = [self._get(self.config_init, key) for key in keys if key not in skip]
        trainer_config = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        if trainer_config.get("logger") in (None, True):  # the default logger follows default_root_dir
            root = trainer_config.get("default_root_dir") or os.getcwd()
            trainer_config["logger"] = CSVLogger(save_dir=root, name="logs")
        configured = [*(trainer_config.get("callbacks") or []), *callbacks]
        if trainer_config.get("enable_progress_bar") is not False and not _has(configured, ProgressBar):
            callbacks.append(StepProgressBar())
        if not _has(configured, RunSummary):
            callbacks.append(RunSummary())
        return self._instantiate_trainer(trainer_config, callbacks)

    def before_fit(self) -> None:
        """Refuse ``--ckpt_path last`` when there is no last checkpoint to resume from."""
        self._require_last_checkpoint()

    def before_validate(self) -> None:
        """As :meth:`before_fit`."""
        self._require_last_checkpoint()

    def before_test(self) -> None:
        """As :meth:`before_fit`."""
        self._require_last_checkpoint()

    def _require_last_checkpoint(self) -> None:
        """Raise :class:`MissingCheckpointError` for ``ckpt_path: last`` without a ``last.ckpt`` to load."""
        if self.config_init[self.subcommand].get("ckpt_path") != "last":
            return
        callbacks = [c for c in self.trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)]
        found = set().union(*(c._find_last_checkpoints(self.trainer) for c in callbacks))
        if not any(os.path.exists(path) for path in found):
            raise MissingCheckpointError([str(c.dirpath) for c in callbacks if c.dirpath])

    def _section(self) -> Any:
        return self.config[self.subcommand] if self.subcommand else self.config


def _has(callbacks: list[Any], kind: type) -> bool:
    return any(isinstance(callback, kind) for callback in callbacks)


def main(args: ArgsType = None, run: bool = True) -> BetaDPOCLI:
    """Run the CLI (``args=None`` reads ``sys.argv``); returns the CLI object (useful with ``run=False``).

    A user's mistake (an unknown option, a refused value, bad data, a model that cannot be found, no checkpoint to
    resume) is printed in a few lines naming the option or file and the fix, and ends the process with exit code
    2 (command line) or 1; ``BETADPO_TRACEBACK=1`` prints the full traceback too. Other errors propagate.

    Raises:
        SystemExit: after printing such a message (and for ``--help`` / ``--print_config``, with code 0).
    """
    quiet_known_noise()
    try:
        return BetaDPOCLI(
            PreferenceModule,
            PreferenceDataModule,
            args=args,
            run=run,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"description": "β-DPO and the DPO family on PyTorch Lightning."},
            auto_configure_optimizers=False,
        )
    except Exception as error:
        explained = explain(error)
        if explained is None:
            raise
        sys.exit(report(error, explained))


def console_main() -> int:
    """The ``betadpo`` console script: :func:`main` on ``sys.argv``, exit code 0 on success."""
    main()
    return 0
