"""The command line of the supervised warm start: ``python -m betadpo_lightning.sft fit --config FILE``.

A ``LightningCLI`` of :class:`~betadpo_lightning.sft.SFTModule` and
:class:`~betadpo_lightning.data.PreferenceDataModule`, with sections ``trainer``, ``model`` and ``data``, as in
``configs/synthetic_sft.yaml``. As in the preference CLI, the data's tokenizer is the model's
(``model.model_name_or_path``) unless ``data.tokenizer`` names another, and without a ``trainer.logger`` metrics go
to a CSV logger in ``<trainer.default_root_dir>/logs/version_N/``.
"""

from __future__ import annotations

import os
from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.cli import ArgsType, LightningCLI
from lightning.pytorch.loggers import CSVLogger
from typing_extensions import override

from betadpo_lightning.data import PreferenceDataModule
from betadpo_lightning.sft import SFTModule

__all__ = ["SFTCLI", "console_main", "main"]


class SFTCLI(LightningCLI):
    """LightningCLI for :class:`SFTModule` + :class:`PreferenceDataModule`."""

    @override
    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        data, model = config.get("data"), config.get("model")
        if data is not None and model is not None and data.get("tokenizer") is None:
            data["tokenizer"] = model.get("model_name_or_path")

    @override
    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        trainer_config = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        if trainer_config.get("logger") in (None, True):  # the default logger follows default_root_dir
            root = trainer_config.get("default_root_dir") or os.getcwd()
            kwargs["logger"] = CSVLogger(save_dir=root, name="logs")
        return super().instantiate_trainer(**kwargs)


def main(args: ArgsType = None, run: bool = True) -> SFTCLI:
    """Run the SFT command line (``args=None`` reads ``sys.argv``); returns the CLI object."""
    return SFTCLI(
        SFTModule,
        PreferenceDataModule,
        args=args,
        run=run,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"description": "Supervised warm start on the chosen responses of preference pairs."},
    )


def console_main() -> int:
    """The ``betadpo-sft`` console script: :func:`main` on ``sys.argv``, exit code 0 on success."""
    main()
    return 0


if __name__ == "__main__":
    main()
