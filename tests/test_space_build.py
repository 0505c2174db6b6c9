"""``x2ctclip space OUT --model DIR``: the Space folder is complete (no placeholder requirement, models: in its card),
installs its requirements offline into a fresh virtual environment and answers a request through gradio_client.

The fresh venv has no packages of its own; a .pth line points it at this environment's site-packages directory
(the dependencies: torch, transformers, gradio ...) because nothing can be downloaded here. A directory named in a
.pth file is put on sys.path without running *its* .pth files, so this environment's editable x2ctclip is not
visible: the app must import the x2ctclip copy unpacked in the Space folder (checked)."""

from __future__ import annotations

import json
import os
import site
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_hub import tiny_model_and_processor

from x2ctclip.train.hub.export import save_for_hub
from x2ctclip.train.cli.app import main as cli_main


@pytest.fixture(scope="module")
def space(tmp_path_factory):
    root = tmp_path_factory.mktemp("space")
    model, processor = tiny_model_and_processor(seed=5)
    folder = save_for_hub(model, processor, root / "x2ctclip-tiny",
                              training_info={"base_models": ["microsoft/swin-tiny-patch4-window7-224"]})
    # The wheel is built from this checkout (the tests' parent folder), so the test holds for an installed x2ctclip too
    # (CI installs it non-editable), where `x2ctclip space` without --wheel has no source tree to build from.
    from x2ctclip.train.hub.space import build_wheel

    wheel = build_wheel(root / "wheelhouse", Path(__file__).resolve().parents[1])
    assert cli_main(["space", str(root / "space"), "--model", str(folder), "--wheel", str(wheel)]) == 0
    return root / "space"


def test_space_folder_is_complete(space, capsys):
    for name in ("app.py", "demo_engine.py", "space_app.py", "README.md", "requirements.txt",
                 "x2ctclip/__init__.py", "x2ctclip/processors/__init__.py", "model/config.json"):
        assert (space / name).is_file(), name
    assert len(list((space / "wheels").glob("x2ctclip-*-py3-none-any.whl"))) == 1
    from x2ctclip.train.hub.space import app_files

    for source in app_files():  # demo_engine imports its sibling modules by file name: each one is copied
        assert (space / source.name).read_bytes() == source.read_bytes(), source.name
    requirements = (space / "requirements.txt").read_text()
    assert "YOUR-ORG" not in requirements and "git+" not in requirements and "x2ctclip @" not in requirements
    assert "gradio" in requirements and "transformers" in requirements
    from huggingface_hub import metadata_load

    meta = metadata_load(space / "README.md")
    assert meta["sdk"] == "gradio" and meta["app_file"] == "space_app.py"
    assert meta["models"] == ["microsoft/swin-tiny-patch4-window7-224"] and meta["license"] == "cc-by-nc-sa-4.0"
    assert "X2CTCLIP_DEMO_MODEL\", 'model'" in (space / "space_app.py").read_text()
    # A non-empty output and a model that is neither a folder nor a Hub id get one clear line each.
    capsys.readouterr()
    assert cli_main(["space", str(space), "--model", str(space / "model")]) == 2
    assert "not an empty folder" in capsys.readouterr().err
    assert cli_main(["space", str(space.parent / "x"), "--model", "no such model"]) == 2
    assert "neither a model folder nor a Hub id" in capsys.readouterr().err


def test_space_for_a_hub_id_names_it(space, tmp_path):
    wheel = next((space / "wheels").glob("x2ctclip-*.whl"))
    out = tmp_path / "hub_space"
    assert cli_main(["space", str(out), "--model", "someone/x2ctclip-swin", "--wheel", str(wheel)]) == 0
    from huggingface_hub import metadata_load

    assert metadata_load(tmp_path / "hub_space" / "README.md")["models"] == ["someone/x2ctclip-swin"]
    assert "'someone/x2ctclip-swin'" in (tmp_path / "hub_space" / "space_app.py").read_text()
    assert not (tmp_path / "hub_space" / "model").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_space_installs_offline_in_a_fresh_venv_and_answers(space, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    deps = [p for p in site.getsitepackages() + [site.getusersitepackages()] if Path(p, "torch").is_dir()]
    deps += [line.strip() for p in site.getsitepackages() for pth in Path(p).glob("*.pth")
             for line in pth.read_text().splitlines() if line.strip() and not line.startswith(("import", "#"))
             and Path(line.strip(), "torch").is_dir()]  # fmt: skip
    assert deps, "no site-packages with torch found"
    Path(purelib, "deps.pth").write_text(deps[0] + "\n")
    # The venv's bundled setuptools is older than torch's pin and would shadow the environment's: drop it.
    import shutil

    for old in Path(purelib).glob("setuptools*"):
        shutil.rmtree(old) if old.is_dir() else old.unlink()
    pip = subprocess.run([str(python), "-m", "pip", "install", "--no-index", "--find-links", str(space / "wheels"),
                          "-r", str(space / "requirements.txt")], capture_output=True, text=True, timeout=600)
    assert pip.returncode == 0, pip.stdout[-2000:] + pip.stderr[-2000:]
    where = subprocess.run([str(python), "-c", "import x2ctclip; print(x2ctclip.__file__)"], cwd=space,
                           capture_output=True, text=True, timeout=300)
    assert where.returncode == 0, where.stderr[-2000:]
    assert Path(where.stdout.strip()).resolve().is_relative_to(space.resolve())

    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "X2CTCLIP_DEMO_MODEL")}
    env.update(GRADIO_SERVER_NAME="127.0.0.1", GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1")
    log = (tmp_path / "app.log").open("w")
    app = subprocess.Popen([str(python), "space_app.py", "--port", str(port), "--reference-phantoms", "0"],
                           cwd=space, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and app.poll() is None:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(1)
        assert app.poll() is None, (tmp_path / "app.log").read_text()[-3000:]
        from gradio_client import Client, handle_file
        from PIL import Image

        yy, xx = np.mgrid[0:96, 0:80]
        image = tmp_path / "cxr.png"
        Image.fromarray((127 + 100 * np.sin(xx / 5.0) * np.cos(yy / 7.0)).astype(np.uint8)).save(image)
        client = Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=False)
        model_config = json.loads((space / "model" / "config.json").read_text())
        status, chart, view, heat, table, reports = client.predict(
            handle_file(str(image)), model_config["findings"][0], True, api_name="/predict_radiograph")
        assert len(table["data"]) == len(model_config["findings"])
    finally:
        app.terminate()
        app.wait(timeout=30)
        log.close()
