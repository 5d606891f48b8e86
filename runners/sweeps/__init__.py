"""Hyper-parameter sweeps: many ordinary runs searched by Optuna under one supervisor and budget."""
