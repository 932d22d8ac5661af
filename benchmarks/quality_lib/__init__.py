"""Pieces of ``benchmarks/quality.py``: settings and splits, training jobs, evaluation, statistics, report, plots."""
