"""The command line: ``python cli.py fit --config configs/quickstart.yaml`` (or the ``betadpo`` script)."""

from __future__ import annotations

import os
from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger
from typing_extensions import override

from betadpo_lightning.callbacks import DynamicBetaCallback
from betadpo_lightning.data import PreferenceDataModule
from betadpo_lightning.module import PreferenceModule

__all__ = ["DYNAMIC_BETA", "BetaDPOCLI", "main"]

DYNAMIC_BETA = "dynamic_beta"
"""The top-level YAML section of :class:`DynamicBetaCallback`."""


class BetaDPOCLI(LightningCLI):
    """LightningCLI for :class:`PreferenceModule` + :class:`PreferenceDataModule`, with the β callback as a section.

    Besides ``trainer``, ``model`` (with ``optimizer``/``scheduler`` and ``reference`` as ``class_path`` +
    ``init_args``) and ``data``, the YAML has ``dynamic_beta`` for :class:`DynamicBetaCallback`, whose
    ``controller`` is chosen by ``class_path`` (``BetaDPOController`` by default, ``ConstantBetaController``,
    ...). ``dynamic_beta: null`` trains without the callback (fixed ``model.beta``; the module logs the metrics).

    Without a ``trainer.logger``, metrics go to a CSV logger in ``<trainer.default_root_dir>/logs/version_N/``, so
    ``--trainer.default_root_dir`` moves the logs together with the checkpoints of
    :class:`~betadpo_lightning.callbacks.PreferenceCheckpoint` (``<default_root_dir>/checkpoints``).

    Written once: β0 is ``model.beta`` (linked into the controller's ``beta``); the tokenizer is the model's
    (``model.model_name_or_path``) unless ``data.tokenizer`` names another one.
    """

    @override
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(DynamicBetaCallback, DYNAMIC_BETA, required=False)
        parser.set_defaults(
            {f"{DYNAMIC_BETA}.controller": {"class_path": "betadpo_lightning.controllers.BetaDPOController"}}
        )
        parser.link_arguments("model.beta", f"{DYNAMIC_BETA}.controller.init_args.beta")

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
        return self._instantiate_trainer(trainer_config, callbacks)

    def _section(self) -> Any:
        return self.config[self.subcommand] if self.subcommand else self.config


def main(args: ArgsType = None, run: bool = True) -> BetaDPOCLI:
    """Run the CLI (``args=None`` reads ``sys.argv``); returns the CLI object (useful with ``run=False``)."""
    return BetaDPOCLI(
        PreferenceModule,
        PreferenceDataModule,
        args=args,
        run=run,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"description": "β-DPO and the DPO family on PyTorch Lightning."},
    )
