"""X2CT-CLIP Gradio demo: CT-level findings from a chest X-ray (and from a CT through its simulated X-ray).

Run locally::

    python spaces_demo/app.py --model outputs/quickstart/model [--host 127.0.0.1] [--port 7860]

Without ``--model`` the app uses ``$X2CTCLIP_DEMO_MODEL`` or the quickstart's output folder
``outputs/quickstart/model`` (written by ``x2ctclip quickstart --out outputs/quickstart``) and exits with status 2,
naming that command, when there is none. On a Hugging Face Space (``app_file: app.py``) set the Space variable
``X2CTCLIP_DEMO_MODEL`` to the model folder committed with the Space.

Privacy and safety: analytics and Hub telemetry are switched off before Gradio is imported and the Hub is put in
offline mode, so the app makes no outside calls; the server reads no file outside its own upload cache
(``allowed_paths`` is empty); uploads are size-checked by the server and type-, size- and content-checked here
(:mod:`demo_engine`); the queue bounds how many requests run at once.
"""

from __future__ import annotations

import os

# Set before gradio / huggingface_hub / matplotlib are imported: they read these at import time.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
# Offline unless the deployer says otherwise (a Space serving a Hub id may set HF_HUB_OFFLINE=0 to download it).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", os.environ["HF_HUB_OFFLINE"])
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import ctypes  # noqa: E402
import gc  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from huggingface_hub import snapshot_download  # noqa: E402

# demo_engine and its sibling modules (uploads, ood, gallery, ...) sit next to this file, also on a Space.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from demo_engine import (  # noqa: E402
    FLAG_MEANING,
    MODE_TITLES,
    SIMULATION_MODES,
    DemoEngine,
    InputError,
    Issue,
    Limits,
    Predictions,
    overlay_saliency,
    render_chart,
    to_uint8,
)

logger = logging.getLogger("x2ctclip.demo")

QUICKSTART_OUT = Path("outputs") / "quickstart"
DEFAULT_MODEL = QUICKSTART_OUT / "model"
QUICKSTART_COMMAND = f"x2ctclip quickstart --out {QUICKSTART_OUT.as_posix()}"
MODEL_ENV = "X2CTCLIP_DEMO_MODEL"
REPORT_COLUMN_WIDTHS = ["7%", "11%", "14%", "68%"]  # rank, similarity, case, report
DISCLAIMER = (
    "Research demo, **not for clinical use**. The model reads frontal chest radiographs; its findings are CT-level "
    "labels (CT-RATE) that it learnt from radiographs simulated from CT."
)


# ---------------------------------------------------------------------------------------------------- formatting
def _issues_markdown(issues: list[Issue], withheld: bool) -> str:
    if not issues:
        return ""
    head = ("### ⚠️ Input checks failed: predictions withheld\nTick *Show predictions even when input checks fail* "
            "to see them anyway (they are not reliable).") if withheld else (
            "### ⚠️ Input checks failed: the predictions below are NOT reliable")  # fmt: skip
    return head + "\n" + "\n".join(f"- **{i.code}**: {i.message}" for i in issues)


def _probability_table(predictions: list[Predictions], findings: list[str]) -> pd.DataFrame:
    """One row per finding: each source's probability, and for one source its threshold and decision."""
    table = {"Finding": list(findings)}
    for pred in predictions:
        table[pred.source] = [round(float(p), 3) for p in pred.probabilities]
    if len(predictions) == 1:
        pred = predictions[0]
        thresholds = pred.thresholds if pred.thresholds is not None else np.full(len(findings), 0.5)
        table["Threshold"] = [None if not np.isfinite(t) else round(float(t), 3) for t in thresholds]
        table["At or above threshold"] = [
            "" if not np.isfinite(t) else ("yes" if p >= t else "no") for p, t in zip(pred.probabilities, thresholds)
        ]
    return pd.DataFrame(table)


def _reports_table(retrieved: list[tuple[float, str, str]]) -> pd.DataFrame:
    rows = [(rank + 1, round(score, 3), name, report) for rank, (score, name, report) in enumerate(retrieved)]
    return pd.DataFrame(rows, columns=["Rank", "Cosine similarity", "Case", "Report"])


def _calibration_line(predictions: list[Predictions]) -> str:
    """Which probabilities are calibrated: one line per distinct calibration, naming its sources."""
    groups: dict[str, list[str]] = {}
    for p in predictions:
        how = f"calibrated probabilities ({p.calibration})" if p.calibrated else p.calibration
        groups.setdefault(how, []).append(p.source)
    return "  \n".join(f"*{', '.join(sources)}*: {how}" for how, sources in groups.items())


def _model_summary(engine: DemoEngine) -> str:
    towers = ", ".join(engine.model.config.towers)
    calibration = (f"calibration for {', '.join(sorted(engine.calibrators))}" if engine.calibrators
                   else "no calibration (raw zero-shot probabilities)")  # fmt: skip
    gallery = f"{len(engine.gallery)} reports ({engine.gallery.source})" if engine.gallery else "none"
    reference = engine.reference.source if engine.reference else "none (no latent input check)"
    folder = engine.model_dir.resolve()
    trained = (f"**Trained on** {engine.distribution}; {FLAG_MEANING}." if engine.distribution else
               f"**Training distribution not recorded** (no demo_assets.json: run `x2ctclip demo-assets MODEL --data "
               f"PREPROCESSED`); {FLAG_MEANING}.")  # fmt: skip
    return (trained + "  \n" + f"**Model** `{folder.parent.name}/{folder.name}` (towers: {towers}; {calibration}) · "
            "**report gallery**: "
            f"{gallery} · **input-check reference**: {reference} · **limits**: "
            f"{engine.limits.describe()}")  # fmt: skip


def release_memory() -> None:
    """Hand freed heap back to the system after each request (glibc keeps it otherwise, so one hostile upload would
    leave the server gigabytes above its idle level); a no-op where ``malloc_trim`` does not exist."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


# ------------------------------------------------------------------------------------------------------ handlers
class DemoHandlers:
    """The Gradio event functions: engine calls with friendly errors (``gr.Error``) for every failure, so a bad
    upload never reaches the user as a traceback and never stops the server."""

    def __init__(self, engine: DemoEngine):
        self.engine = engine

    def _guard(self, what: str, function, *args):
        try:
            return function(*args)
        except InputError as error:
            raise gr.Error(str(error), title=f"Cannot analyse this {what}", print_exception=False) from None
        except MemoryError:
            message = f"The {what} is too large to analyse in this server's memory."
            raise gr.Error(message, print_exception=False) from None
        except Exception as error:  # anything else is our bug: log it, answer politely, keep serving
            logger.exception("unexpected error while analysing a %s", what)
            raise gr.Error(
                f"Something went wrong while analysing this {what} ({type(error).__name__}). The server is still "
                "running; please try another file.", print_exception=False,
            ) from None
        finally:
            release_memory()

    def predict_radiograph(self, file: Any, finding: str | None, show_anyway: bool, raw_scores: bool = False):
        return self._guard("radiograph", self._predict_radiograph, file, finding, bool(show_anyway), bool(raw_scores))

    def _predict_radiograph(self, file, finding, show_anyway, raw_scores=False):
        engine = self.engine
        result = engine.analyse_radiograph(file, finding, show_anyway=show_anyway, raw_scores=raw_scores)
        status = _issues_markdown(result.issues, result.withheld)
        view = to_uint8(result.view)
        if result.withheld:
            return status, None, view, None, pd.DataFrame(), pd.DataFrame()
        shown = [result.predictions] + ([result.raw_predictions] if result.raw_predictions is not None else [])
        chart = render_chart(shown, engine.findings, unreliable=bool(result.issues))
        lines = [status, _calibration_line(shown)]
        if engine.gallery is None:
            lines.append("*No report gallery loaded (start the app with --gallery CSV for retrieval).*")
        return ("\n\n".join(x for x in lines if x), chart, view, overlay_saliency(result.view, result.saliency),
                _probability_table(shown, engine.findings),
                _reports_table(result.retrieved))  # fmt: skip

    def saliency(self, file: Any, finding: str | None, show_anyway: bool):
        if file is None:  # the dropdown changed before any upload: nothing to update
            return None
        return self._guard("radiograph", self._saliency, file, finding, bool(show_anyway))

    def _saliency(self, file, finding, show_anyway):
        view, attribution, _ = self.engine.saliency_for(file, finding, show_anyway=show_anyway)
        return None if attribution is None else overlay_saliency(view, attribution)

    def analyse_ct(self, file: Any, show_anyway: bool):
        return self._guard("CT", self._analyse_ct, file, bool(show_anyway))

    def _analyse_ct(self, file, show_anyway):
        engine = self.engine
        result = engine.analyse_ct(file, show_anyway=show_anyway)
        images = [to_uint8(result.simulated[m]) for m in SIMULATION_MODES]
        status = _issues_markdown(result.issues, result.withheld)
        if result.withheld:
            return status, *images, None, pd.DataFrame(), pd.DataFrame()
        chart = render_chart(result.predictions, engine.findings, unreliable=bool(result.issues))
        lines = [status, _calibration_line(result.predictions), *[f"*{n}*" for n in result.notes]]
        if result.retrieved:
            lines.append(f"Reports retrieved with {result.retrieval_source}.")
        return ("\n\n".join(x for x in lines if x), *images, chart,
                _probability_table(result.predictions, engine.findings), _reports_table(result.retrieved))  # fmt: skip


# ------------------------------------------------------------------------------------------------------ interface
def build_demo(engine: DemoEngine, concurrency: int = 2, queue_size: int = 64) -> gr.Blocks:
    """The Gradio app around ``engine``, with a bounded queue: at most ``concurrency`` radiograph requests (and one
    CT request) run at once, up to ``queue_size`` wait."""
    handlers = DemoHandlers(engine)
    findings = engine.findings
    default_finding = "Cardiomegaly" if "Cardiomegaly" in findings else findings[0]
    limits = engine.limits
    with gr.Blocks(title="X2CT-CLIP demo", analytics_enabled=False, delete_cache=(1800, 3600)) as demo:
        gr.Markdown("# X2CT-CLIP: CT-level findings from a chest X-ray\n" + DISCLAIMER)
        gr.Markdown(_model_summary(engine), elem_id="model_summary")
        with gr.Tab("Chest X-ray"):
            with gr.Row():
                with gr.Column(scale=1, min_width=280):
                    cxr_file = gr.File(
                        label=f"Chest X-ray: PNG, JPEG or DICOM (MONOCHROME1 too), up to "
                        f"{limits.max_image_bytes / 1e6:g} MB and {limits.max_image_pixels / 1e6:g} megapixels",
                        elem_id="cxr_file",
                    )  # fmt: skip
                    finding = gr.Dropdown(findings, value=default_finding, label="Finding for the saliency map",
                                          elem_id="finding")  # fmt: skip
                    show_anyway = gr.Checkbox(False, label="Show predictions even when input checks fail (not "
                                              "reliable)", elem_id="cxr_show_anyway")  # fmt: skip
                    raw_scores = gr.Checkbox(False, label="Also show the raw zero-shot scores (uncalibrated; they "
                                             "saturate)", elem_id="cxr_raw_scores")  # fmt: skip
                    analyse = gr.Button("Analyse", variant="primary", elem_id="cxr_analyse")
                    cxr_status = gr.Markdown(elem_id="cxr_status")
                with gr.Column(scale=2):
                    cxr_chart = gr.Plot(label="Findings", format="png", elem_id="cxr_chart")
            with gr.Row():
                view = gr.Image(label="The square the model sees", type="numpy", format="png", interactive=False,
                                elem_id="cxr_view")
                heat = gr.Image(label="Saliency for the chosen finding (gradient x input; red: towards present, blue: "
                                "towards absent)", type="numpy", format="png", interactive=False,
                                elem_id="cxr_saliency")  # fmt: skip
            cxr_table = gr.Dataframe(label="Probabilities", interactive=False, elem_id="cxr_table")
            cxr_reports = gr.Dataframe(label="Most similar reports in the gallery", interactive=False, wrap=True,
                                       column_widths=REPORT_COLUMN_WIDTHS, elem_id="cxr_reports")  # fmt: skip
            analyse.click(handlers.predict_radiograph, [cxr_file, finding, show_anyway, raw_scores],
                          [cxr_status, cxr_chart, view, heat, cxr_table, cxr_reports],
                          api_name="predict_radiograph")  # fmt: skip
            finding.input(handlers.saliency, [cxr_file, finding, show_anyway], [heat], api_name="saliency")
        with gr.Tab("CT volume"):
            with gr.Row():
                with gr.Column(scale=1, min_width=280):
                    ct_file = gr.File(label=f"Chest CT: NIfTI (.nii, .nii.gz) or a zip of one DICOM series, up to "
                                      f"{limits.max_ct_bytes / 1e6:g} MB", elem_id="ct_file")  # fmt: skip
                    ct_show_anyway = gr.Checkbox(False, label="Show predictions even when input checks fail (not "
                                                 "reliable)", elem_id="ct_show_anyway")  # fmt: skip
                    ct_analyse = gr.Button("Simulate and analyse", variant="primary", elem_id="ct_analyse")
                    ct_status = gr.Markdown(elem_id="ct_status")
                with gr.Column(scale=2):
                    with gr.Row():
                        sims = [gr.Image(label=f"Simulated radiograph: {MODE_TITLES[m]}", type="numpy",
                                         format="png", interactive=False, elem_id=f"ct_sim_{m}")
                            for m in SIMULATION_MODES]  # fmt: skip
            ct_chart = gr.Plot(label="Findings", format="png", elem_id="ct_chart")
            ct_table = gr.Dataframe(label="Probabilities", interactive=False, elem_id="ct_table")
            ct_reports = gr.Dataframe(label="Most similar reports in the gallery", interactive=False, wrap=True,
                                      column_widths=REPORT_COLUMN_WIDTHS, elem_id="ct_reports")  # fmt: skip
            ct_analyse.click(handlers.analyse_ct, [ct_file, ct_show_anyway],
                             [ct_status, *sims, ct_chart, ct_table, ct_reports],
                             api_name="analyse_ct", concurrency_limit=1)  # fmt: skip
    demo.queue(default_concurrency_limit=concurrency, max_size=queue_size)
    return demo


def launch(demo: gr.Blocks, engine: DemoEngine, host: str | None = None, port: int | None = None,
           prevent_thread_lock: bool = False, quiet: bool = False):  # fmt: skip
    """Serve ``demo``: no share link, no server-side rendering, nothing readable but Gradio's own upload cache, the
    upload size capped at the engine's largest limit (Gradio answers 413 beyond it)."""
    return demo.launch(
        server_name=host,  # None: $GRADIO_SERVER_NAME or 127.0.0.1 (a Space sets 0.0.0.0)
        server_port=port,  # None: $GRADIO_SERVER_PORT or 7860
        share=False,
        allowed_paths=[],
        blocked_paths=[str(engine.model_dir.resolve())],
        max_file_size=max(engine.limits.max_ct_bytes, engine.limits.max_image_bytes),
        ssr_mode=False,
        show_error=False,
        prevent_thread_lock=prevent_thread_lock,
        quiet=quiet,
        mcp_server=False,
        theme=gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                                font_mono=["ui-monospace", "Consolas", "monospace"]),  # fmt: skip
    )


# ------------------------------------------------------------------------------------------------------------ CLI
def resolve_model_dir(model: str | None) -> Path:
    """``--model``, else ``$X2CTCLIP_DEMO_MODEL``, else the quickstart's folder (in the working directory, then
    next to the repository this file belongs to). Raises FileNotFoundError naming the command that makes it."""
    if model:
        path = Path(model)
        if (path / "config.json").is_file():
            return path
        if not path.exists() and _looks_like_hub_id(model):
            return hub_model_dir(model)
        raise FileNotFoundError(f"{path} is not a saved X2CT-CLIP model folder (no config.json).")
    if os.environ.get(MODEL_ENV):
        return resolve_model_dir(os.environ[MODEL_ENV])
    candidates = [DEFAULT_MODEL, Path(__file__).resolve().parents[1] / DEFAULT_MODEL]
    for path in candidates:
        if (path / "config.json").is_file():
            return path
    raise FileNotFoundError(
        f"No model folder given and none at {DEFAULT_MODEL.as_posix()}. Make it with\n\n    {QUICKSTART_COMMAND}\n\n"
        "(from the repository root), or pass --model DIR (a folder saved by X2CTCLIPModel.save_pretrained with its "
        f"processor), or set ${MODEL_ENV}."
    )


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))


def hub_model_dir(repo_id: str) -> Path:
    """The local folder of a Hub model repo (its weights, processor and demo assets), through huggingface_hub's
    cache: offline (the default here) only the cache is read; with ``HF_HUB_OFFLINE=0`` it is downloaded once."""
    try:
        path = Path(snapshot_download(repo_id))
    except Exception as error:  # LocalEntryNotFoundError offline, RepositoryNotFoundError, HTTP errors online
        raise FileNotFoundError(f"{repo_id}: not a local folder, and the Hub repo could not be loaded "
                                f"({type(error).__name__}; offline, only the local Hub cache is read: set "
                                "HF_HUB_OFFLINE=0 to download it).") from None  # fmt: skip
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{repo_id}: the Hub repo has no config.json; not an X2CT-CLIP model.")
    return path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="X2CT-CLIP Gradio demo (chest X-ray and CT).")
    parser.add_argument("--model", help=f"model folder or Hub id (default: ${MODEL_ENV} or "
                        f"{DEFAULT_MODEL.as_posix()})")  # fmt: skip
    parser.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1; 0.0.0.0 on a Space)")
    parser.add_argument("--port", type=int, default=None, help="port (default 7860)")
    parser.add_argument("--gallery", help="report CSV ('report' or CT-RATE's Findings_EN/Impressions_EN columns) or "
                        "a gallery .safetensors for retrieval (default: the model folder's report_gallery.safetensors)")
    parser.add_argument("--write-gallery", metavar="PATH", help="save the gallery built from --gallery CSV as PATH "
                        "(e.g. MODEL/report_gallery.safetensors) and exit")  # fmt: skip
    parser.add_argument("--concurrency", type=int, default=2, help="radiograph requests running at once (default 2)")
    parser.add_argument("--queue-size", type=int, default=64, help="requests that may wait in the queue (default 64)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--reference-phantoms", type=int, default=16, help="synthetic phantoms for the input-check "
                        "reference when the folder has no cxr_reference.safetensors (0: no latent check)")  # fmt: skip
    parser.add_argument("--max-image-mb", type=float, default=50, help="largest radiograph upload in MB (default 50)")
    parser.add_argument("--max-ct-mb", type=float, default=500, help="largest CT upload in MB (default 500)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        model_dir = resolve_model_dir(args.model)
        if args.concurrency < 1 or args.queue_size < 1:
            raise ValueError("--concurrency and --queue-size must be at least 1.")
        limits = Limits(max_image_bytes=int(args.max_image_mb * 1e6), max_ct_bytes=int(args.max_ct_mb * 1e6))
        engine = DemoEngine(model_dir, gallery=args.gallery, limits=limits, device=args.device,
                            reference_phantoms=0 if args.write_gallery else args.reference_phantoms)  # fmt: skip
        if args.write_gallery:
            if engine.gallery is None:
                raise ValueError("--write-gallery needs --gallery CSV.")
            print(f"wrote {engine.gallery.save(args.write_gallery)} ({len(engine.gallery)} reports)")
            return 0
    except (FileNotFoundError, ValueError) as error:
        print(f"x2ctclip demo: error: {error}", file=sys.stderr)
        return 2
    demo = build_demo(engine, concurrency=args.concurrency, queue_size=args.queue_size)
    launch(demo, engine, host=args.host, port=args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
