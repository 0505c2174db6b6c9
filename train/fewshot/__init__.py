"""Few-shot adaptation: label fractions by iterative stratification, the linear probe on frozen CXR features, and
LoRA (peft) on the CXR tower.

May import: the library, ``x2ctclip.train.data`` and ``x2ctclip.train.evaluation``.
"""

from ..compat import package_getattr as _package_getattr

# The names of the old module x2ctclip.train.fewshot keep working for one release, with a DeprecationWarning.
__getattr__ = _package_getattr(__name__)
