"""The one progress bar helper of the application (tqdm, quiet when not a terminal)."""

from __future__ import annotations

from tqdm.auto import tqdm


def progress_bar(total: int, initial: int = 0, desc: str = "", unit: str = "vol", disable: bool | None = None):
    """A tqdm bar (preprocessing, caching, training). ``disable=None`` hides it when stderr is not a terminal."""
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=disable, dynamic_ncols=True)
