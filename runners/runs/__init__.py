"""A run's life on the submitting machine: submit, the supervisor and who restarts it, the job's
environment and secrets, run-end telemetry."""
