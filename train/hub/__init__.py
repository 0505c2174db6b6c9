"""The Hugging Face Hub: model cards, card and folder checks, export of a model folder, upload, the Space folder
and the demo's assets.

May import: the library, ``x2ctclip.train.data`` and ``x2ctclip.train.evaluation``.
"""

from ..compat import package_getattr as _package_getattr

# The names of the old module x2ctclip.train.hub keep working for one release, with a DeprecationWarning.
__getattr__ = _package_getattr(__name__)
