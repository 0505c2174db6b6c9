"""The one progress bar helper of the application (tqdm, quiet when not a terminal)."""

from __future__ import annotations





def progress_bar(total: int, initial: int = 0, desc: str = "", unit: str = "vol", disable: bool | None = None):
    """A tqdm bar (shared by the preprocessing and caching commands)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=disable, dynamic_ncols=True)
