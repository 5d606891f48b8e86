"""Model management: a run's logged model registered with its lineage, and the champion gate.

``lineage`` says which data, code, environment and params made a model and writes that on
the registered version; ``gate`` compares a candidate with the version holding the
``champion`` alias, applies the promotion rules (``policies.promotion``) and moves the alias,
recording every decision and its numbers on the version; ``retention`` asks the store whether
a snapshot's objects still exist. ``hml model`` is the CLI's (``runners.cli.model``); the
supervisor registers and gates when a job with a ``model:`` section succeeds.
"""
