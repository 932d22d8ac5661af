"""β-DPO, MallowsPO, ε-DPO and the DPO family for PyTorch Lightning."""

__version__ = "0.1.0"

__all__ = ["__version__"]
