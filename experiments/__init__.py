"""Experiment entry points: ``python -m experiments.run`` (one gin configuration) and
``python -m experiments.ablate`` (a grid of gin bindings over one configuration)."""
