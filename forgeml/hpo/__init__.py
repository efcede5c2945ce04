"""Hyper-parameter search over recipe fields (Optuna), each trial a registered run."""
