"""The command line: ``python cli.py fit --config configs/quickstart.yaml`` (or the ``betadpo`` script)."""

from __future__ import annotations

from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI
from typing_extensions import override

from betadpo_lightning.callbacks import DynamicBetaCallback
from betadpo_lightning.data import PreferenceDataModule
from betadpo_lightning.module import PreferenceModule

__all__ = ["BetaDPOCLI", "main"]


class BetaDPOCLI(LightningCLI):
    """LightningCLI for :class:`PreferenceModule` + :class:`PreferenceDataModule` with β-DPO as a top-level section.

    The YAML has the usual ``trainer``, ``model`` (with ``optimizer``/``scheduler`` as ``class_path`` +
    ``init_args``) and ``data`` sections, plus ``beta`` for :class:`DynamicBetaCallback` (``alpha: 0`` and ``rho: 0``
    give plain DPO). Two values are written once and linked: ``model.beta`` is β0 of the callback, and
    ``model.model_name_or_path`` is the tokenizer of the data.
    """

    @override
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(DynamicBetaCallback, "beta")
        parser.link_arguments("model.beta", "beta.beta")
        parser.link_arguments("model.model_name_or_path", "data.tokenizer")


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
