"""Entry point: ``python cli.py fit --config configs/quickstart.yaml``."""

from betadpo_lightning.commands.preflight import exit_on_missing_paths

if __name__ == "__main__":
    exit_on_missing_paths()  # a mistyped --config or data path is reported before torch and Lightning load
    from betadpo_lightning.commands.cli import main

    main()
