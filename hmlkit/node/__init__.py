"""What runs on a job's host: the wrapper (``jobscript`` builds it) and the helpers shipped beside
it, each one file run with ``python3 -I -S``: standard library only, any Python 3 a host has."""
