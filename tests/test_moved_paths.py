"""The old flat module paths of ``x2ctclip.train`` keep working for one release, with a DeprecationWarning (CHANGELOG)."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import x2ctclip.train
from x2ctclip.train.compat import MOVED


def test_table_names_every_public_name_where_it_lives():
    for old, entry in MOVED.items():
        importlib.import_module(f"x2ctclip.train.{entry['default']}")
        for name, new in entry["names"].items():
            module = importlib.import_module(f"x2ctclip.train.{new}")
            assert hasattr(module, name), f"x2ctclip.train.{old}.{name}: not in x2ctclip.train.{new}"


def test_old_module_path_forwards_and_warns():
    sys.modules.pop("x2ctclip.train.evaluate_model", None)
    with pytest.warns(DeprecationWarning, match="evaluation.evaluate"):
        old = importlib.import_module("x2ctclip.train.evaluate_model")
    from x2ctclip.train.evaluation.models import load_model

    with pytest.warns(DeprecationWarning, match=r"evaluation\.models\.load_model"):
        assert old.load_model is load_model
    with pytest.raises(AttributeError):
        old.no_such_name  # noqa: B018


def test_old_name_from_a_module_that_became_a_package():
    from x2ctclip.train.data.streaming import stream_ct_rate

    with pytest.warns(DeprecationWarning, match=r"data\.streaming\.stream_ct_rate"):
        from x2ctclip.train.data import stream_ct_rate as old
    assert old is stream_ct_rate


def test_python_dash_m_runs_the_command():
    out = subprocess.run([sys.executable, "-m", "x2ctclip.train.cli", "--help"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "quickstart" in out.stdout


def test_no_module_imports_a_private_name_from_another():
    import ast

    root = Path(x2ctclip.train.__file__).resolve().parent
    found = []
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("x2ctclip"):
                found += [f"{path.relative_to(root)}: {node.module}.{a.name}" for a in node.names
                          if a.name.startswith("_") and not a.name.startswith("__")]
    assert not found, found
