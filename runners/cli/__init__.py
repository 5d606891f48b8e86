"""The ``hml`` surface: the entry point, the warm agent and its client, the commands, progress.

The top of the runner: nothing below imports it."""
