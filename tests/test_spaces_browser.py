"""The Space demo in a real browser: headless Chromium (Debian's package, never a download) driven by Playwright
uploads the real radiograph RG1_UNCR.dcm (pydicom-data), runs the prediction, and checks that the chart, the saliency
map and the tables render, that another finding redraws the map, that a colour photo gets a warning instead of
numbers, and that the page never contacts another host.

Environment:
- ``X2CTCLIP_DEMO_MODEL``: serve this model folder (e.g. the quickstart's) instead of the tiny one built here, with
  the app's default latent input check; ``X2CTCLIP_DEMO_GALLERY``: a report CSV for its retrieval. When that model
  withholds its predictions for the radiograph, the test ticks "show anyway" and runs it again.
- ``X2CTCLIP_DEMO_SCREENSHOT``: save the screenshot there (``docs/demo_screenshot.png``); otherwise to a temp folder.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.error import URLError
from urllib.request import urlopen

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip

pytestmark = pytest.mark.slow

try:
    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError
except ImportError:  # the test skips without Playwright
    PlaywrightTimeoutError = TimeoutError


def _chromium() -> str:
    for candidate in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.skip("headless Chromium not found (Debian: apt-get install -y chromium); browsers are never downloaded")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def rg1() -> str:
    import pydicom.data

    path = pydicom.data.get_testdata_file("RG1_UNCR.dcm", download=False)
    if path is None:
        pytest.skip("needs the pydicom-data package (RG1_UNCR.dcm), which is not installed")
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    if os.environ.get("X2CTCLIP_DEMO_MODEL"):
        return Path(os.environ["X2CTCLIP_DEMO_MODEL"])
    from test_spaces_demo import make_tiny_model_folder, write_report_csv

    root = tmp_path_factory.mktemp("browser")
    # No stored input-check reference: the real radiograph then takes the normal path (the check has its own tests).
    return make_tiny_model_folder(root / "model", write_report_csv(root / "reports.csv"), reference_phantoms=0)


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    """``python spaces_demo/app.py --model DIR`` on 127.0.0.1 and a free port, as a user starts it."""
    port = _free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("X2CTCLIP_DEMO_MODEL", None)
    command = [sys.executable, str(REPO / "spaces_demo" / "app.py"), "--model", str(model_dir), "--host",
               "127.0.0.1", "--port", str(port)]  # fmt: skip
    if not os.environ.get("X2CTCLIP_DEMO_MODEL"):
        command += ["--reference-phantoms", "0"]  # the tiny folder has no stored reference: no latent check
    if os.environ.get("X2CTCLIP_DEMO_GALLERY"):
        command += ["--gallery", os.environ["X2CTCLIP_DEMO_GALLERY"]]
    with open(log, "wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    try:
        while True:
            if process.poll() is not None:
                pytest.fail(f"the demo server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        break
            except (URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the demo server did not answer within 120 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def _image_loaded(page, selector: str, timeout: float = 60_000) -> str:
    """Waits until ``selector`` holds a decoded image; returns its ``src``."""
    page.wait_for_function(
        "s => { const i = document.querySelector(s); return i && i.complete && i.naturalWidth > 0; }",
        arg=selector, timeout=timeout,
    )
    return page.get_attribute(selector, "src")


def _upload(page, component: str, path: str | Path, debug_dir: Path) -> None:
    """Puts ``path`` into the gr.File ``component`` and waits until the component shows the file. On a busy machine the
    file can land on an input the page is still mounting, so the upload is tried again (at most 3 times); a failure
    leaves a screenshot and the component's HTML in ``debug_dir``."""
    name = Path(path).name
    for attempt in range(3):
        page.wait_for_selector(f"{component} input[type=file]", state="attached", timeout=60_000)
        page.set_input_files(f"{component} input[type=file]", str(path))
        try:
            page.wait_for_selector(f"{component} >> text={name}", timeout=20_000)
            return
        except PlaywrightTimeoutError:
            page.screenshot(path=str(debug_dir / f"upload_{name}_{attempt}.png"), full_page=True)
            (debug_dir / f"upload_{name}_{attempt}.html").write_text(page.inner_html(component))
            if attempt == 2:
                raise


def test_predict_in_a_real_browser(server, rg1, tmp_path):
    pytest.importorskip("playwright", reason="needs Playwright for Python (pip install playwright)")
    from playwright.sync_api import sync_playwright

    executable = _chromium()
    screenshot = Path(os.environ.get("X2CTCLIP_DEMO_SCREENSHOT") or tmp_path / "demo_screenshot.png")
    requests: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1360, "height": 1000})
            page.on("request", lambda request: requests.append(request.url))
            page.goto(server, wait_until="domcontentloaded")
            page.wait_for_selector("#cxr_file input[type=file]", state="attached", timeout=60_000)

            # Upload the real radiograph (PA chest CR, MONOCHROME1) and run the prediction.
            _upload(page, "#cxr_file", rg1, tmp_path)
            page.click("#cxr_analyse")
            if os.environ.get("X2CTCLIP_DEMO_MODEL"):
                # Another model may judge the radiograph out of its distribution: then show the numbers anyway.
                page.wait_for_function(
                    "() => document.querySelector('#cxr_chart img') || "
                    "document.querySelector('#cxr_status').innerText.includes('predictions withheld')",
                    timeout=120_000,
                )
                if "predictions withheld" in page.inner_text("#cxr_status"):
                    page.check("#cxr_show_anyway input")
                    page.click("#cxr_analyse")
                    page.wait_for_selector("#cxr_status >> text=NOT reliable", timeout=120_000)
            _image_loaded(page, "#cxr_chart img")
            first = _image_loaded(page, "#cxr_saliency img")
            _image_loaded(page, "#cxr_view img")
            # Gradio's data frame is a virtual table (rows are drawn on scroll): count rows by the grid's aria-rowcount.
            page.wait_for_function(
                "() => document.querySelector('#cxr_table [role=grid]')?.getAttribute('aria-rowcount') === '19'"
            )
            status = page.inner_text("#cxr_status")
            assert "probabilities" in status  # says whether they are calibrated
            if not os.environ.get("X2CTCLIP_DEMO_MODEL"):
                assert "Input checks failed" not in status, status
                assert int(page.get_attribute("#cxr_reports [role=grid]", "aria-rowcount")) >= 2  # header + a report
            chart = page.locator("#cxr_chart img").bounding_box()
            assert chart["width"] > 300 and chart["height"] > 300
            page.screenshot(path=str(screenshot), full_page=True)

            # Another finding redraws the saliency map only.
            page.click("#finding input")  # opens the option list
            page.click('#finding [role=option][aria-label="Emphysema"]')
            page.wait_for_function(
                "old => { const i = document.querySelector('#cxr_saliency img'); "
                "return i && i.complete && i.naturalWidth > 0 && i.src !== old; }",
                arg=first, timeout=60_000,
            )

            # A colour photo: a warning, no chart.
            photo = tmp_path / "photo.png"
            rng = np.random.default_rng(0)
            blocks = rng.integers(0, 255, (8, 8, 3)).astype(np.uint8)
            Image.fromarray(np.kron(blocks, np.ones((32, 32, 1), np.uint8))).save(photo)
            page.uncheck("#cxr_show_anyway input")
            page.click('#cxr_file button[aria-label="Clear"]')  # brings the upload area back
            page.wait_for_selector("#cxr_file >> text=RG1_UNCR.dcm", state="detached")
            _upload(page, "#cxr_file", photo, tmp_path)
            page.click("#cxr_analyse")
            page.wait_for_selector("#cxr_status >> text=predictions withheld", timeout=60_000)
            assert "colour" in page.inner_text("#cxr_status")
            assert page.locator("#cxr_chart img").count() == 0
        finally:
            browser.close()
    outside = [u for u in requests if not u.startswith((server, "data:", "blob:"))]
    assert outside == [], f"the page contacted other hosts: {outside[:5]}"
    assert screenshot.is_file() and Image.open(screenshot).size[0] == 1360
