"""Entry points: the command line, export, sampling, plots and run summaries."""
