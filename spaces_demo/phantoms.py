"""Reference radiographs simulated from synthetic chest CT phantoms, for a model folder without a stored reference.

The phantoms come from the training application's synthetic studies (:mod:`x2ctclip.train.synthetic`), the one part
of ``x2ctclip.train`` the demo may use; it is imported only when a reference has to be built this way (a folder
written by ``x2ctclip demo-assets`` carries its own, and the demo then never imports the training package).
"""

from __future__ import annotations

import numpy as np
from tqdm.auto import tqdm

from x2ctclip.processors.simulation import simulate_cxr


def simulate_phantom_cxrs(n: int, shape: tuple[int, int, int] = (64, 128, 128), seed: int = 4321) -> list[np.ndarray]:
    """``n`` frontal CXRs (mean projection, [0, 1]) simulated from synthetic chest CT phantoms
    (:func:`x2ctclip.train.synthetic.study.make_study`, CT-RATE-like findings drawn at random)."""
    # Imported here, not at the top: the training package is needed only for this fallback (see the module docstring).
    from x2ctclip.train.synthetic.study import make_study

    images = []
    for patient in tqdm(range(n), desc="reference phantoms", unit="CT", disable=n < 4):
        study = make_study(seed=seed, shape=shape, split="valid", patient=patient + 1)
        images.append(simulate_cxr(study.volumes[0], spacing=study.spacings[0], mode="mean"))
    return images
