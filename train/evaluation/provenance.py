"""What every evaluation output records: provenance, versions, fingerprints, atomic JSON writes."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from x2ctclip.train.evaluation.metrics import (
    jsonable,
)
SOURCE = {"name": "x2ctclip evaluate"}


# ---------------------------------------------------------------------------------------------------------- files
def write_atomic(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace`` (no half-written
    file is ever visible under ``path``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_json(path: Path, record: dict[str, Any]) -> Path:
    return write_atomic(path, json.dumps(jsonable(record), indent=2, allow_nan=False) + "\n")


def file_fingerprint(path: Path) -> str | None:
    try:
        from x2ctclip.train.data.embedding_cache import model_fingerprint

        return model_fingerprint(path)
    except OSError:
        return None


def package_versions() -> dict[str, str]:
    import transformers

    import x2ctclip

    return {"x2ctclip": x2ctclip.__version__, "torch": torch.__version__, "transformers": transformers.__version__}


def provenance_record(command: str, seed: int | None = None) -> dict[str, Any]:
    return {
        "command": command,
        "command_line": " ".join(["x2ctclip", *sys.argv[1:]]) if Path(sys.argv[0]).name == "x2ctclip" else None,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seed": seed,
        "versions": package_versions(),
    }
