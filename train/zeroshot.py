"""Deprecated location of the zero-shot classifier: it moved into the library, :mod:`x2ctclip.zero_shot`.

``from x2ctclip.train.zeroshot import ZeroShotClassifier`` keeps working for one release and warns
(DeprecationWarning); import ``from x2ctclip import ZeroShotClassifier`` (or ``x2ctclip.zero_shot``) instead.
"""

from __future__ import annotations

import warnings

from x2ctclip.zero_shot import ENSEMBLES, ZeroShotClassifier, ZeroShotOutput, build_prompts

__all__ = ["ENSEMBLES", "ZeroShotClassifier", "ZeroShotOutput", "build_prompts"]

warnings.warn(
    "x2ctclip.train.zeroshot is deprecated and will be removed in the next release; import ZeroShotClassifier, "
    "ZeroShotOutput and build_prompts from x2ctclip (x2ctclip.zero_shot) instead.",
    DeprecationWarning,
    stacklevel=2,
)
