"""Starting one of hml's own Python processes: never from the caller's directory.

``python -m runners.x`` puts the working directory first on ``sys.path``, so ``hml`` run from a
directory another account can write (a shared scratch directory, ``/tmp``) would import a
``runners/``, ``mlflow/``, ``yaml/`` or ``sitecustomize.py`` planted there, with every vault
secret in the environment. Isolated mode (``-I``) leaves out the working directory, the
script's directory, the user site and every ``PYTHON*`` variable; the installed package is
found through site-packages as usual (an editable install's finder included). On hosts the
wrapper's helpers run as ``python3 -I -S`` for the same reason (``hmlkit.node``).
"""

from __future__ import annotations

import sys


def python_module(module: str, *args: str) -> list[str]:
    """The command line of ``python -m module args`` under this interpreter, isolated."""
    return [sys.executable, "-I", "-m", module, *args]
