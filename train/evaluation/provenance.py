"""What every evaluation output records: provenance, versions, fingerprints, atomic JSON writes."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
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


def write_report(out: Path, stem: str, record: dict[str, Any], markdown: Callable[[dict[str, Any]], str],
                 **more_files: str) -> dict[str, Any]:
    """Write an evaluation ``record`` as ``out/{stem}.json`` and its ``markdown(record)`` as ``out/{stem}.md``
    (both atomically), after listing them and ``more_files`` (written by the caller) in ``record["files"]``;
    returns the record as JSON values."""
    record["files"] = {"json": f"{stem}.json", "markdown": f"{stem}.md", **more_files}
    write_json(out / f"{stem}.json", record)
    write_atomic(out / f"{stem}.md", markdown(record))
    return jsonable(record)


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
