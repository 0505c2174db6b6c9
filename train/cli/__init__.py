"""The ``x2ctclip`` command: ``app`` parses and dispatches; one module per command group does the work's argument
handling and calls a job. May import every job package; nothing imports it.
"""

from .app import main

__all__ = ["main"]

from ..compat import package_getattr as _package_getattr

# The names of the old module x2ctclip.train.cli keep working for one release, with a DeprecationWarning.
__getattr__ = _package_getattr(__name__)
