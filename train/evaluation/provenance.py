"""What every evaluation output records: provenance, versions, fingerprints, atomic JSON writes."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import torch
import transformers

import x2ctclip
from x2ctclip.fileio import write_atomic, write_json_atomic
from x2ctclip.train.data.embedding_cache import model_fingerprint
from x2ctclip.train.evaluation.metrics import jsonable

__all__ = ["SOURCE", "file_fingerprint", "package_versions", "provenance_record", "write_atomic", "write_json"]

SOURCE = {"name": "x2ctclip evaluate"}


def write_json(path: Path, record: dict[str, Any]) -> Path:
    return write_json_atomic(path, jsonable(record))


def file_fingerprint(path: Path) -> str | None:
    try:
        return model_fingerprint(path)
    except OSError:
        return None


def package_versions() -> dict[str, str]:
    return {"x2ctclip": x2ctclip.__version__, "torch": torch.__version__, "transformers": transformers.__version__}


def provenance_record(command: str, seed: int | None = None) -> dict[str, Any]:
    return {
        "command": command,
        "command_line": " ".join(["x2ctclip", *sys.argv[1:]]) if Path(sys.argv[0]).name == "x2ctclip" else None,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seed": seed,
        "versions": package_versions(),
    }
