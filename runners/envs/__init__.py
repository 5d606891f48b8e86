"""A job's Python environment: ``environment:`` in the job file, resolved once at submit into a
lock with hashes (``lock``), kept with the run, built once per host by the wrapper
(``hmlkit.node.venv``); ``ship`` sends hosts the runner's pip and, for hosts without an index,
the lock's wheels over SSH."""
