"""Uploading a checked model folder to the Hub."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import huggingface_hub
from huggingface_hub import ModelCard
from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects

from x2ctclip.train.hub.card_sections import folder_files
from x2ctclip.train.hub.metadata import is_repo_id
from x2ctclip.train.hub.validation import check_hub_folder

_HIDDEN_UPLOAD_PATTERNS = [".*", "*/.*", "__pycache__", "*/__pycache__/*", "__pycache__/*", "*.pyc"]


# --------------------------------------------------------------------------------------------------------------
# Push
# --------------------------------------------------------------------------------------------------------------


def list_upload_files(folder: str | os.PathLike) -> list[tuple[str, int]]:
    """``(path in repo, size in bytes)`` of the files :func:`push_folder` uploads: everything in ``folder`` except
    hidden files, ``__pycache__`` and what ``huggingface_hub`` never uploads (``.git``, its cache)."""
    folder = Path(folder)
    files = folder_files(folder)
    patterns = _HIDDEN_UPLOAD_PATTERNS + list(DEFAULT_IGNORE_PATTERNS)
    return list(filter_repo_objects(files, ignore_patterns=patterns, key=lambda item: item[0]))


@dataclass
class PushResult:
    """What :func:`push_folder` did (or, with ``dry_run``, would do)."""

    repo_id: str
    files: list[tuple[str, int]]
    dry_run: bool
    warnings: list[str] = field(default_factory=list)
    url: str | None = None
    card_metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self.files)


def _snippet_model_id(readme: Path) -> str | None:
    match = re.search(r'^model_id = "([^"]*)"', readme.read_text(encoding="utf-8"), re.MULTILINE)
    return match.group(1) if match else None


def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    dry_run: bool = False,
    token: str | None = None,
    commit_message: str | None = None,
    api: Any = None,
) -> PushResult:
    """Upload a Hub model folder: validate it locally, then ``create_repo`` (``exist_ok``) and ``upload_folder``.

    Args:
        folder: a folder made by :func:`save_for_hub` (or a converted CT-CLIP folder with its card).
        repo_id: ``owner/name`` on the Hub.
        private: create the repository private.
        dry_run: only validate and list the files (no network access at all).
        token: Hub token (default: the logged-in user's).
        commit_message: the upload's commit message.
        api: an ``huggingface_hub.HfApi`` (default: a new one); tests pass a mock.

    Raises:
        ValueError: an invalid ``repo_id`` or a folder that fails :func:`validate_hub_folder`.
    """
    folder = Path(folder)
    if not is_repo_id(repo_id):
        raise ValueError(f"{repo_id!r} is not a Hub repository id of the form 'owner/name'.")
    check = check_hub_folder(folder)
    warnings = list(check.warnings)
    snippet_id = _snippet_model_id(folder / "README.md")
    if snippet_id is not None and snippet_id != repo_id:
        warnings.append(
            f"README.md: the usage example loads {snippet_id!r}, not {repo_id!r}; rebuild the card with "
            f"model_id={repo_id!r} (save_for_hub) if users should copy it verbatim"
        )
    files = list_upload_files(folder)
    metadata = ModelCard.load(folder / "README.md").data.to_dict()
    result = PushResult(repo_id=repo_id, files=files, dry_run=dry_run, warnings=warnings, card_metadata=metadata)
    if dry_run:
        return result
    if api is None:
        api = huggingface_hub.HfApi(token=token)  # looked up on the module, where a caller may replace it
    repo = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        repo_type="model",
        commit_message=commit_message or f"Upload {folder.name} with x2ctclip",
        ignore_patterns=list(_HIDDEN_UPLOAD_PATTERNS),
    )
    result.url = str(getattr(repo, "url", repo) or f"https://huggingface.co/{repo_id}")
    return result
