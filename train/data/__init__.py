"""CT-RATE data: the release layout and tables, ``datasets`` streaming (local or ``hf://``), preprocessing into
fixed-size Arrow shards, the cache of frozen-tower latents, and the folders they write.

May import: the library (``x2ctclip``, ``x2ctclip.processors``) and ``x2ctclip.train.progress``. Nothing else in
``x2ctclip.train`` imports into it except ``synthetic`` (the release layout it writes).
"""

from ..compat import package_getattr as _package_getattr

# The names of the old module x2ctclip.train.data keep working for one release, with a DeprecationWarning.
__getattr__ = _package_getattr(__name__)
