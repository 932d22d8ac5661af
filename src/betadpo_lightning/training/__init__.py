"""Training: the Lightning modules, the β decision, the non-finite guard, metrics and reporting."""
