"""What every command line of the library shares: a ``LightningCLI`` with short errors, run folders and a summary.

:class:`RunCLI` is the base of the preference command line (:mod:`betadpo_lightning.commands.cli`) and of the
supervised
warm
start's (:mod:`~.sft_cli`); :func:`run_cli` runs one and turns a user's mistake into a few lines.
"""

from __future__ import annotations

import os
import sys
from argparse import ArgumentError
from collections.abc import Mapping
from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger
from typing_extensions import override

from betadpo_lightning.commands.cli_errors import MissingCheckpointError, explain, report
from betadpo_lightning.commands.cli_options import config_error, option_names, parse_error
from betadpo_lightning.commands.console import quiet_known_noise, verbose_requested
from betadpo_lightning.commands.progress import StepProgressBar
from betadpo_lightning.commands.run_folder import OVERWRITE_RUN, add_run_folder_arguments, guard_run_folder
from betadpo_lightning.commands.run_summary import RunSummary

__all__ = ["RENAMED", "RunCLI", "run_cli"]

RENAMED = {
    "--optimizer": "the optimizer is model.optimizer, e.g. --model.optimizer torch.optim.SGD --model.optimizer.lr 0.01",
    "--lr_scheduler": "the scheduler is model.scheduler, e.g. --model.scheduler torch.optim.lr_scheduler.ConstantLR",
    "--model.loss_type": "the loss is model.loss, a short name (--model.loss ipo) or class_path + init_args",
    **{
        f"--model.{key}": f"{key} is a hyperparameter of the loss now: model.loss.init_args.{key}"
        for key in ("label_smoothing", "home_advantage", "dispersion_scale", "reference_free", "average_logps")
    },
}
"""LightningCLI options that these command lines do not have, and what to use instead."""


class RunCLI(LightningCLI):
    """A ``LightningCLI`` of a module and :class:`~betadpo_lightning.data.PreferenceDataModule` for training runs.

    Subcommands ``fit``, ``validate`` and ``test`` (no ``predict``). Create it with ``auto_configure_optimizers=False``
    (as :func:`run_cli` does): the optimizer and scheduler are ``model.optimizer`` and ``model.scheduler``, and the
    top-level ``--optimizer`` / ``--lr_scheduler`` get an error saying so. The data's tokenizer is the model's
    (``model.model_name_or_path``) unless ``data.tokenizer`` names another one. Without a ``trainer.logger``, metrics
    go to a CSV logger in ``<trainer.default_root_dir>/logs/version_N/``. Unless the config has its own, the Trainer
    gets a :class:`~betadpo_lightning.commands.progress.StepProgressBar` (with ``enable_progress_bar``) and a
    :class:`~betadpo_lightning.commands.run_summary.RunSummary`. ``--ckpt_path last`` with no ``last.ckpt`` is an error
    (Lightning would start from scratch). Mistakes are raised as
    :class:`~betadpo_lightning.commands.cli_errors.CLIError` naming the option.

    Options are never abbreviated (``--trainer.max_step`` is an unknown option, not ``--trainer.max_steps``). Each
    command holds its run folder (:mod:`~betadpo_lightning.commands.run_folder`): a second live run into the same
    ``trainer.default_root_dir`` is refused, and so is a fit without ``--ckpt_path`` over an earlier run's
    checkpoints unless ``--overwrite_run true`` moves them aside.
    """

    links: Mapping[str, str] = {}
    """Options filled from another one (target: source), named by their source in errors."""

    disabled_sections: frozenset[str] = frozenset()
    """Callback sections (``add_lightning_class_args``) set to ``null`` in this run: not given to the Trainer."""

    @staticmethod
    @override
    def subcommands() -> dict[str, set[str]]:
        commands = LightningCLI.subcommands()
        del commands["predict"]  # nothing to predict; sample with betadpo_lightning.commands.sample
        return commands

    @override
    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        kwargs.setdefault("exit_on_error", False)  # errors are raised, and explained by `run_cli` in a few lines
        kwargs.setdefault("allow_abbrev", False)
        return super().init_parser(**kwargs)

    @override
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        add_run_folder_arguments(parser)

    @override
    def _run_subcommand(self, subcommand: str) -> None:
        with guard_run_folder(self.trainer, subcommand, self.config_init[subcommand]):
            saved = self.config.get(subcommand, self.config)
            if saved.get(OVERWRITE_RUN):  # done: the run's config.yaml must resume it, not start over again
                saved[OVERWRITE_RUN] = False
            super()._run_subcommand(subcommand)

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

    def _groups(self) -> dict[str, type]:
        """The top-level sections and their classes, to name the option whose value a class refused."""
        return {"model": self._model_class, "data": self._datamodule_class, "trainer": self.trainer_class}

    @override
    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except Exception as error:
            raise config_error(error, self._section(), self._groups(), self.links) from error

    def _extra_callbacks(self) -> list[Any]:
        """Callbacks of top-level sections (``add_lightning_class_args``) to hand to the Trainer."""
        keys = self._parser(self.subcommand).callback_keys
        return [self._get(self.config_init, key) for key in keys if key not in self.disabled_sections]

    @override
    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        callbacks = self._extra_callbacks()
        trainer_config = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        if trainer_config.get("logger") in (None, True):  # the default logger follows default_root_dir
            root = trainer_config.get("default_root_dir") or os.getcwd()
            trainer_config["logger"] = CSVLogger(save_dir=root, name="logs")
        if trainer_config.get("enable_model_summary") is None:  # the table on request; RunSummary prints one line
            trainer_config["enable_model_summary"] = verbose_requested()
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


def run_cli(cli_class: type[RunCLI], model_class: type, description: str, args: ArgsType, run: bool) -> Any:
    """Build and run ``cli_class`` for ``model_class`` and the preference data module; explain a user's mistake.

    A user's mistake (an unknown option, a refused value, bad data, a model that cannot be found, no checkpoint to
    resume) is printed in a few lines naming the option or file and the fix, and ends the process with exit code
    2 (command line) or 1; ``BETADPO_TRACEBACK=1`` prints the full traceback too. Other errors propagate.

    Returns:
        The CLI object.

    Raises:
        SystemExit: after printing such a message (and for ``--help`` / ``--print_config``, with code 0).
    """
    from betadpo_lightning.data import PreferenceDataModule

    quiet_known_noise()
    try:
        return cli_class(
            model_class,
            PreferenceDataModule,
            args=args,
            run=run,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"description": description},
            auto_configure_optimizers=False,
        )
    except Exception as error:
        explained = explain(error)
        if explained is None:
            raise
        sys.exit(report(error, explained))
