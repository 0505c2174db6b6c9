"""Atomic writes: the one helper every x2ctclip writer goes through.

A file or folder under its final name is always complete: it is written under a hidden temporary sibling in the same
folder (same file system, so the rename is atomic), flushed to disk with ``fsync``, and renamed over the final name
with ``os.replace``. A failure or an interrupt leaves the previous version (or nothing) and removes the temporary.

- :func:`write_atomic` writes bytes or text to a file;
- :func:`write_json_atomic` writes a JSON document (strict: no NaN);
- :func:`open_atomic` is a context manager for writers that stream into a handle (CSV, YAML, pickles);
- :func:`atomic_dir` is a context manager that yields an empty temporary folder and, when the block succeeds, puts it
  in place of the final folder (:func:`replace_dir` does that last step on its own).

A folder is replaced in two renames (the old folder moves aside, then the new one moves in), so there is no moment
at which a reader finds a half-deleted folder under the final name; the old folder is deleted afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator


def _fsync_dir(folder: Path) -> None:
    # The rename itself lives in the folder's entry table; fsync the folder so it survives a power cut (POSIX only).
    if os.name != "posix":
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _temporary_sibling(path: Path, suffix: str = ".tmp") -> tuple[int, Path]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    return fd, Path(tmp)


@contextlib.contextmanager
def open_atomic(path: str | os.PathLike, mode: str = "w", *, encoding: str | None = "utf-8",
                newline: str | None = None) -> Iterator[IO[Any]]:
    """Open a temporary sibling of ``path`` for writing; on a clean exit flush, fsync and rename it over ``path``.

    ``mode`` is ``"w"`` (text) or ``"wb"`` (bytes). On an exception the temporary file is removed and ``path`` keeps
    its previous content.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"open_atomic: mode must be 'w' or 'wb', got {mode!r}.")
    path = Path(path)
    fd, tmp = _temporary_sibling(path)
    try:
        kwargs = {} if "b" in mode else {"encoding": encoding, "newline": newline}
        with os.fdopen(fd, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_atomic(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write ``data`` (text is UTF-8 encoded) to ``path`` atomically; returns ``path`` as a :class:`Path`."""
    path = Path(path)
    with open_atomic(path, "wb") as handle:
        handle.write(data.encode("utf-8") if isinstance(data, str) else data)
    return path


def write_json_atomic(path: str | os.PathLike, obj: Any, *, indent: int | None = 2, **dumps_kwargs: Any) -> Path:
    """Write ``obj`` as JSON (``allow_nan=False`` unless given, trailing newline) to ``path`` atomically."""
    dumps_kwargs.setdefault("allow_nan", False)
    return write_atomic(path, json.dumps(obj, indent=indent, **dumps_kwargs) + "\n")


def replace_dir(tmp: str | os.PathLike, final: str | os.PathLike) -> Path:
    """Put the finished folder ``tmp`` in place of ``final`` (a folder or a file, or nothing yet).

    Both must be on the same file system (``tmp`` is normally a sibling made by :func:`atomic_dir`).
    """
    tmp, final = Path(tmp), Path(final)
    aside: Path | None = None
    if final.is_dir() and not final.is_symlink():
        aside = Path(tempfile.mkdtemp(prefix=f".{final.name}.old.", dir=final.parent))
        os.rmdir(aside)
        os.replace(final, aside)
    elif final.exists() or final.is_symlink():
        final.unlink()
    try:
        os.replace(tmp, final)
    except BaseException:
        if aside is not None and not final.exists():
            os.replace(aside, final)  # put the previous version back
        raise
    _fsync_dir(final.parent)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
    return final


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``final``; when the block succeeds it replaces ``final``.

    On an exception the temporary folder is removed and ``final`` is left as it was::

        with atomic_dir(out_dir) as tmp:
            model.save_pretrained(tmp)
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        yield tmp
        replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


__all__ = ["atomic_dir", "open_atomic", "replace_dir", "write_atomic", "write_json_atomic"]
