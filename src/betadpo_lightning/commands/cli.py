"""The command line: ``python cli.py fit --config configs/quickstart.yaml`` (or the ``betadpo`` script)."""

from __future__ import annotations

from lightning.pytorch.cli import ArgsType, LightningArgumentParser
from typing_extensions import override

from betadpo_lightning.callbacks import DynamicBetaCallback
from betadpo_lightning.commands.cli_base import RENAMED, RunCLI, run_cli
from betadpo_lightning.training.module import PreferenceModule

__all__ = ["DYNAMIC_BETA", "LINKS", "RENAMED", "BetaDPOCLI", "console_main", "main"]

DYNAMIC_BETA = "dynamic_beta"
"""The top-level YAML section of :class:`DynamicBetaCallback`."""

LINKS = {f"{DYNAMIC_BETA}.controller.init_args.beta": "model.beta"}
"""Options filled from another one (target: source); β0 is written once, as ``model.beta``."""


class BetaDPOCLI(RunCLI):
    """LightningCLI for :class:`PreferenceModule` + :class:`PreferenceDataModule`, with the β callback as a section.

    Besides ``trainer``, ``model`` (with ``optimizer``/``scheduler`` and ``reference`` as ``class_path`` +
    ``init_args``) and ``data``, the YAML has ``dynamic_beta`` for :class:`DynamicBetaCallback`, whose
    ``controller`` is chosen by ``class_path`` (``BetaDPOController`` by default, ``ConstantBetaController``,
    ...). ``dynamic_beta: null`` trains without the callback (fixed ``model.beta``; the module logs the metrics).

    Everything else is :class:`~betadpo_lightning.commands.cli_base.RunCLI`'s: subcommands ``fit``, ``validate`` and
    ``test``;
    ``model.optimizer`` / ``model.scheduler`` (the top-level ``--optimizer`` / ``--lr_scheduler`` are refused with a
    hint); logs in ``<trainer.default_root_dir>/logs/version_N/`` beside the checkpoints of
    :class:`~betadpo_lightning.callbacks.PreferenceCheckpoint` (``<default_root_dir>/checkpoints``); a step progress
    bar and a run summary; ``--ckpt_path last`` refused when there is no ``last.ckpt``; mistakes raised as
    :class:`~betadpo_lightning.commands.cli_errors.CLIError` naming the option.

    Written once: β0 is ``model.beta`` (linked into the controller's ``beta``); the tokenizer is the model's
    (``model.model_name_or_path``) unless ``data.tokenizer`` names another one.

    Options are never abbreviated and each command holds its run folder (see ``RunCLI``).
    """

    links = LINKS

    @override
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        super().add_arguments_to_parser(parser)
        parser.add_lightning_class_args(DynamicBetaCallback, DYNAMIC_BETA, required=False)
        parser.set_defaults(
            {f"{DYNAMIC_BETA}.controller": {"class_path": "betadpo_lightning.core.controllers.BetaDPOController"}}
        )
        for target, source in LINKS.items():
            parser.link_arguments(source, target)

    @override
    def _groups(self) -> dict[str, type]:
        return {**super()._groups(), DYNAMIC_BETA: DynamicBetaCallback}

    @override
    def instantiate_classes(self) -> None:
        config = self._section()
        disabled = DYNAMIC_BETA in config and config[DYNAMIC_BETA] is None
        self.disabled_sections = frozenset({DYNAMIC_BETA} if disabled else ())
        if disabled:  # jsonargparse cannot instantiate a null group: drop it meanwhile
            del config[DYNAMIC_BETA]
        try:
            super().instantiate_classes()
        finally:
            if disabled:
                config[DYNAMIC_BETA] = None


def main(args: ArgsType = None, run: bool = True) -> BetaDPOCLI:
    """Run the CLI (``args=None`` reads ``sys.argv``); returns the CLI object (useful with ``run=False``).

    A user's mistake (an unknown option, a refused value, bad data, a model that cannot be found, no checkpoint to
    resume) is printed in a few lines naming the option or file and the fix, and ends the process with exit code
    2 (command line) or 1; ``BETADPO_TRACEBACK=1`` prints the full traceback too. Other errors propagate.

    Raises:
        SystemExit: after printing such a message (and for ``--help`` / ``--print_config``, with code 0).
    """
    description = "β-DPO and the DPO family on PyTorch Lightning."
    return run_cli(BetaDPOCLI, PreferenceModule, description, args, run)


def console_main() -> int:
    """The ``betadpo`` console script: :func:`main` on ``sys.argv``, exit code 0 on success."""
    main()
    return 0
