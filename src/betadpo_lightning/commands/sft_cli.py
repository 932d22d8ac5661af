"""The command line of the supervised warm start: ``python -m betadpo_lightning.training.sft fit --config FILE``.

A ``LightningCLI`` of :class:`~betadpo_lightning.training.sft.SFTModule` and
:class:`~betadpo_lightning.data.PreferenceDataModule`, with sections ``trainer``, ``model`` and ``data``, as in
``configs/synthetic_sft.yaml``. As in the preference CLI, the data's tokenizer is the model's
(``model.model_name_or_path``) unless ``data.tokenizer`` names another, and without a ``trainer.logger`` metrics go
to a CSV logger in ``<trainer.default_root_dir>/logs/version_N/``; mistakes are printed in a few lines naming the
option; the optimizer is ``model.optimizer`` (no top-level ``--optimizer``).
"""

from __future__ import annotations

from lightning.pytorch.cli import ArgsType

from betadpo_lightning.commands.cli_base import RunCLI, run_cli
from betadpo_lightning.training.sft import SFTModule

__all__ = ["SFTCLI", "console_main", "main"]


class SFTCLI(RunCLI):
    """LightningCLI for :class:`SFTModule` + :class:`PreferenceDataModule` (see :class:`~.cli_base.RunCLI`)."""


def main(args: ArgsType = None, run: bool = True) -> SFTCLI:
    """Run the SFT command line (``args=None`` reads ``sys.argv``); returns the CLI object.

    Mistakes are printed as a few lines naming the option, as by the preference command line.
    """
    description = "Supervised warm start on the chosen responses of preference pairs."
    return run_cli(SFTCLI, SFTModule, description, args, run)


def console_main() -> int:
    """The ``betadpo-sft`` console script: :func:`main` on ``sys.argv``, exit code 0 on success."""
    main()
    return 0


if __name__ == "__main__":
    main()
