"""``x2ctclip space OUT --model DIR_OR_REPO``: a deployable Hugging Face Space folder for the Gradio demo.

The folder holds the demo (every ``*.py`` of ``spaces_demo/``, :func:`app_files`: ``app.py``, ``demo_engine.py`` and
the sibling modules it imports by file name), ``space_app.py`` (the Space's ``app_file``: it names the model through
``X2CTCLIP_DEMO_MODEL`` and starts ``app.main``), ``README.md`` (the Space card, with ``models:``),
``requirements.txt`` and the x2ctclip package itself, unpacked from a wheel built from this checkout (``pip wheel
--no-deps``) into ``x2ctclip/``.

Why the package is unpacked rather than referenced as a wheel path: a Space installs ``requirements.txt`` before it
copies the repository, so a relative wheel path does not exist at that time; x2ctclip is not on PyPI. ``app.py``'s
folder is first on ``sys.path`` when it runs, so ``import x2ctclip`` finds the unpacked copy, and
``requirements.txt`` lists only the wheel's own dependencies (``Requires-Dist``) and the demo's (gradio), all on
PyPI. The wheel is kept under ``wheels/`` for a local ``pip install``.
"""

from __future__ import annotations

import email
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from x2ctclip.fileio import atomic_dir

__all__ = ["REPO_ROOT", "app_files", "build_space", "build_wheel"]

REPO_ROOT = Path(__file__).resolve().parents[2]
DEMO_DIR = REPO_ROOT / "spaces_demo"


def app_files(demo_dir: Path = DEMO_DIR) -> list[Path]:
    """The demo's Python files copied into a Space: every ``*.py`` of ``spaces_demo/`` (``app.py`` imports
    ``demo_engine``, which imports its sibling modules by their file names, so each one must travel)."""
    return sorted(p for p in demo_dir.glob("*.py") if p.is_file())


#: The names of :func:`app_files` when this module was imported (kept: the old ``x2ctclip.train.space.APP_FILES``).
APP_FILES = tuple(p.name for p in app_files())

SPACE_APP = '''"""Space entry point written by `x2ctclip space`: serve the model named below (a folder in this Space
or a Hub id) on 0.0.0.0:7860 as Spaces expect; X2CTCLIP_DEMO_MODEL, set as a Space variable, takes precedence."""

import os
import sys

os.environ.setdefault("X2CTCLIP_DEMO_MODEL", {model!r})
os.environ.setdefault("GRADIO_SERVER_NAME", "0.0.0.0")

import app  # noqa: E402  (app.py of this folder; it sets the offline / telemetry environment first)

if __name__ == "__main__":
    sys.exit(app.main(sys.argv[1:]))
'''


def build_wheel(dest: Path, source: Path = REPO_ROOT) -> Path:
    """``pip wheel --no-deps --no-build-isolation`` of ``source`` into ``dest`` (offline: the build backend of the
    current environment is used); returns the wheel's path."""
    dest.mkdir(parents=True, exist_ok=True)
    before = set(dest.glob("x2ctclip-*.whl"))
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "-w", str(dest), str(source)],
        capture_output=True, text=True, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    wheels = sorted(set(dest.glob("x2ctclip-*.whl")) - before) or sorted(dest.glob("x2ctclip-*.whl"))
    if proc.returncode != 0 or not wheels:
        last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no wheel written"]
        raise ValueError(f"{source}: building the x2ctclip wheel failed ({last[0]})")
    return wheels[-1]


def _requires(wheel: Path) -> list[str]:
    """The wheel's unconditional ``Requires-Dist`` lines (extras left out)."""
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        meta = email.message_from_bytes(archive.read(name))
    return [r for r in meta.get_all("Requires-Dist") or [] if "extra ==" not in r]


def _demo_requirements() -> list[str]:
    """The package lines of spaces_demo/requirements.txt other than x2ctclip itself."""
    lines = []
    for line in (DEMO_DIR / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not re.match(r"^x2ctclip\b", line):
            lines.append(line)
    return lines


def _card(model: str, models: list[str], license: str, version: str) -> str:
    template = (DEMO_DIR / "README.md").read_text()
    front, body = template.split("---\n", 2)[1:]
    front = re.sub(r"^app_file: .*$", "app_file: space_app.py", front, flags=re.MULTILINE)
    front = re.sub(r"^license: .*$", f"license: {license}", front, flags=re.MULTILINE)
    front = re.sub(r"^models:\n(?:- .*\n)*", "", front, flags=re.MULTILINE)
    if models:
        front += "models:\n" + "".join(f"- {m}\n" for m in models)
    where = f"the model folder `{model}/` of this Space" if not _is_hub_id(model) else f"the Hub model `{model}`"
    note = (
        f"\n> Built by `x2ctclip space` (x2ctclip {version}): serves {where}. The x2ctclip package is unpacked in "
        "`x2ctclip/` (from `wheels/`), so `requirements.txt` holds only packages from PyPI.\n"
    )
    return "---\n" + front + "---\n" + note + body


def _is_hub_id(value: str) -> bool:
    from x2ctclip.train.hub.metadata import is_repo_id

    return is_repo_id(value) and not Path(value).exists()


def build_space(out_dir: str | os.PathLike, model: str, *, wheel: str | os.PathLike | None = None,
                overwrite: bool = False) -> Path:
    """Write the Space folder ``out_dir`` (atomically: a temporary sibling renamed when complete).

    Args:
        out_dir: the folder to write; it must not exist or be empty unless ``overwrite``.
        model: a model folder (copied to ``model/``, validated as a Hub folder first) or a Hub id (served from the
            Hub; ``models:`` names it).
        wheel: an x2ctclip wheel to use (default: built from this checkout).
        overwrite: replace a non-empty ``out_dir``.

    Raises:
        ValueError: a bad model (not a folder with config.json and not a Hub id), a folder that fails the Hub folder
            check, a non-empty ``out_dir``, or a wheel that cannot be built.
    """
    from x2ctclip.train.hub.validation import check_hub_folder
    from x2ctclip.train.hub.folders import read_card_metadata

    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not overwrite:
        raise ValueError(f"{out_dir}: exists and is not an empty folder (pass --overwrite to replace it).")
    model_path = Path(model)
    if not model_path.exists() and not _is_hub_id(model):
        raise ValueError(f"{model}: neither a model folder nor a Hub id ('owner/name').")
    if model_path.exists() and not (model_path / "config.json").is_file():
        raise ValueError(f"{model_path}: not a model folder (no config.json).")
    if not (DEMO_DIR / "app.py").is_file():
        # A source checkout has spaces_demo/ beside train/; an installed wheel ships it as x2ctclip/spaces_demo/.
        raise ValueError(f"{DEMO_DIR}: no demo app here (a broken install?); reinstall x2ctclip.")
    if wheel is None and not (REPO_ROOT / "pyproject.toml").is_file():
        raise ValueError(f"{REPO_ROOT}: an installed x2ctclip, not a source checkout, so no wheel can be built from it: "
                         "pass --wheel WHL (the x2ctclip wheel to ship in the Space).")
    if model_path.exists():
        if not (model_path / "config.json").is_file():
            raise ValueError(f"{model_path}: not a model folder (no config.json).")
        check_hub_folder(model_path)
        meta = read_card_metadata(model_path)
        # A folder committed into the Space: models: names what it is built on (Hub ids of its card).
        from x2ctclip.train.hub.card_sections import bullet_list

        models, license, served = bullet_list(meta.get("base_model")), meta.get("license") or "other", "model"
    elif _is_hub_id(model):
        models, license, served = [model], "other", model
    else:
        raise ValueError(f"{model}: neither a model folder nor a Hub id ('owner/name').")

    with atomic_dir(out_dir) as tmp:  # a temporary sibling, put in place of out_dir when complete
        wheels = tmp / "wheels"
        if wheel is None:
            built = build_wheel(wheels)
        else:
            wheels.mkdir()
            built = Path(shutil.copy2(wheel, wheels / Path(wheel).name))
        with zipfile.ZipFile(built) as archive:
            members = [n for n in archive.namelist() if n.startswith("x2ctclip/")]
            if not members:
                raise ValueError(f"{built}: holds no x2ctclip/ package")
            archive.extractall(tmp, members=members)
        version = built.name.split("-")[1]
        for source in app_files():
            shutil.copy2(source, tmp / source.name)
        (tmp / "space_app.py").write_text(SPACE_APP.format(model=served))
        requirements = _requires(built) + _demo_requirements()
        seen, lines = set(), []
        for req in requirements:
            key = re.split(r"[<>=!~ ;\[]", req, maxsplit=1)[0].lower().replace("_", "-")
            if key not in seen:
                seen.add(key)
                lines.append(req)
        (tmp / "requirements.txt").write_text(
            "# Written by `x2ctclip space`: x2ctclip's own dependencies (its wheel's Requires-Dist) and the demo's.\n"
            "# x2ctclip itself is unpacked in x2ctclip/ next to app.py (Spaces install this file before they copy\n"
            "# the repository, so a wheel path here would not exist yet).\n" + "\n".join(lines) + "\n"
        )
        (tmp / "README.md").write_text(_card(served, models, license, version))
        if model_path.exists():
            shutil.copytree(model_path, tmp / "model", ignore=shutil.ignore_patterns("evaluation", ".*"))
    return out_dir
