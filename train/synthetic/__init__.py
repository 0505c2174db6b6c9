"""Synthetic CT-RATE studies: patient anatomy, the 18 findings, reports, and the writer of the release layout.

May import: the library's processors, ``x2ctclip.train.data.release`` (the names it writes) and
``x2ctclip.train.progress``; nothing else in ``x2ctclip.train``.
"""

from ..compat import package_getattr as _package_getattr

# The names of the old module x2ctclip.train.synthetic keep working for one release, with a DeprecationWarning.
__getattr__ = _package_getattr(__name__)
