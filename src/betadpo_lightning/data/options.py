"""Validation of PreferenceDataModule's options, with messages naming the option and what it accepts."""

from __future__ import annotations

from betadpo_lightning.data.synthetic import SyntheticConfig

SYNTHETIC = "synthetic"
"""The ``dataset`` name of the built-in synthetic dataset."""

__all__ = ["SYNTHETIC", "check_options", "check_positive"]


def check_options(
    dataset: str,
    tokenizer: str | None,
    synthetic: SyntheticConfig | None,
    val_fraction: float | None,
    format: str,
    chat_template: object,
    on_bad_row: str,
) -> None:
    """Raise a ``ValueError`` naming the first option that is invalid or inconsistent with the others."""
    if dataset != SYNTHETIC and tokenizer is None:
        raise ValueError(f"dataset '{dataset}' needs a tokenizer (name or path); only 'synthetic' brings its own")
    if dataset != SYNTHETIC and synthetic is not None:
        raise ValueError(f"synthetic options were given, but dataset is '{dataset}', not 'synthetic'")
    if val_fraction is not None and not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie strictly between 0 and 1, got {val_fraction}")
    choices: dict[str, tuple[object, tuple[object, ...]]] = {
        "format": (format, ("auto", "standard", "conversational", "implicit")),
        "chat_template": (chat_template, ("auto", True, False)),
        "on_bad_row": (on_bad_row, ("error", "skip")),
    }
    for name, (value, allowed) in choices.items():
        if value not in allowed:
            raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def check_positive(**values: int | None) -> None:
    """Raise a ``ValueError`` naming the first option that is set but below 1."""
    for name, value in values.items():
        if value is not None and value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value}")
