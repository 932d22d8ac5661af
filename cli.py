"""Entry point: ``python cli.py fit --config configs/quickstart.yaml``."""

from betadpo_lightning.commands.cli import main

if __name__ == "__main__":
    main()
