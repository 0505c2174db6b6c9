"""The demo's files beside a model (names and the latent safetensors format), shared by their writer and reader.

``x2ctclip demo-assets`` (:mod:`x2ctclip.train.hub.demo_assets`) writes them into a model folder; the Space demo
(``spaces_demo/``) reads them. Living here, in the library, the demo reads them without importing the training
package:

- ``calibration.json`` (:data:`CALIBRATION_FILE`): the schema of :mod:`x2ctclip.calibration`, or ``{"cxr": {...},
  "ct": {...}}`` with one calibration per tower;
- ``report_gallery.safetensors`` (:data:`GALLERY_FILE`): ``text_embeds`` ``(N, D)`` float32 L2-normalised report
  latents, with the reports and their names as JSON lists in the metadata (``reports``, ``names``);
- ``cxr_reference.safetensors`` (:data:`REFERENCE_FILE`): ``cxr_embeds`` ``(N, D)`` float32 L2-normalised CXR
  latents of in-distribution radiographs (metadata ``source``, ``split``, ``accept_share``);
- ``demo_assets.json`` (:data:`ASSETS_FILE`): the split, counts, acceptance share and training distribution.

Latent files are one safetensors tensor ``{name: (N, D) float32}`` with string metadata (:func:`save_latents`,
:func:`load_latents`).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from .fileio import write_atomic

__all__ = ["ASSETS_FILE", "CALIBRATION_FILE", "GALLERY_FILE", "REFERENCE_FILE", "load_latents", "save_latents"]

ASSETS_FILE = "demo_assets.json"
CALIBRATION_FILE = "calibration.json"
GALLERY_FILE = "report_gallery.safetensors"
REFERENCE_FILE = "cxr_reference.safetensors"


def save_latents(path: str | os.PathLike, name: str, latents: torch.Tensor, metadata: dict[str, str]) -> Path:
    """Write ``{name: latents}`` (as float32 on the CPU) with string ``metadata`` to a safetensors file, atomically
    (:func:`x2ctclip.fileio.write_atomic`); returns the path."""
    return write_atomic(Path(path), save({name: latents.detach().float().contiguous().cpu()}, metadata=metadata))


def load_latents(path: str | os.PathLike, name: str) -> tuple[torch.Tensor, dict[str, str]]:
    """The ``(N, D)`` float32 tensor ``name`` of a safetensors file and the file's string metadata.

    Raises:
        ValueError: one line naming the file: not a readable safetensors file, no tensor ``name``, or a tensor that
            is not 2-D.
    """
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            if name not in handle.keys():
                raise ValueError(f"{path}: no tensor {name!r} (found {sorted(handle.keys())}).")
            tensor = handle.get_tensor(name).float()
    except (OSError, RuntimeError, SafetensorError) as error:  # SafetensorError: a bad header (an Exception only)
        raise ValueError(f"{path}: not a readable safetensors file ({error}).") from None
    if tensor.ndim != 2:
        raise ValueError(f"{path}: {name} must have shape (N, D), got {tuple(tensor.shape)}.")
    return tensor, metadata
