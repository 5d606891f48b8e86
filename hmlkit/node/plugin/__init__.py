"""Code the job wrapper puts into the job's own interpreter (its MLflow client), not run
under ``python3 -I -S``: it imports MLflow, so it is loaded only where MLflow is."""
