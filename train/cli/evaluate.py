"""``x2ctclip evaluate zeroshot|retrieval|calibrate|all``: evaluate a saved model folder (see
:mod:`x2ctclip.train.evaluation.evaluate`).

Examples::

    x2ctclip evaluate calibrate --model out/model --data out/data/preprocessed --split valid --method platt
    x2ctclip evaluate zeroshot  --model out/model --data out/data/preprocessed --split test --compare out/baseline
    x2ctclip evaluate zeroshot  --model out/model --external mimic_ct/labels.csv --mapping mimic-ct
    x2ctclip evaluate retrieval --model out/model --data out/data/preprocessed --cache out/data/cache --split test
    x2ctclip evaluate all       --model out/model --data out/data/preprocessed --cache out/data/cache

Under ``torchrun --nproc_per_node N -m x2ctclip.train.cli evaluate ...`` the forward passes are dealt across the
ranks and gathered in order (the same numbers as one process); rank 0 computes the metrics, writes the files and
prints. ``calibrate`` runs on rank 0 alone.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from x2ctclip.train import distributed
from x2ctclip.train.cli.args import float_between, non_negative_int, positive_int

ACTIONS = {
    "zeroshot": "per-finding and averaged AUROC / AP / F1 with bootstrap CIs (zero-shot prompts or a trained head)",
    "retrieval": "Recall@K and MAP@K between CXR, report and CT latents",
    "calibrate": "fit per-finding calibration and thresholds on a validation split and store them in the model config",
    "all": "calibrate on the validation split, then classification and retrieval on the test split",
}


def _thresholds_arg(value: str):
    if value == "youden":
        return value
    if value == "none":
        return None
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'youden', 'none' or a target sensitivity in (0, 1], got {value!r}")
    if not 0 < number <= 1:
        raise argparse.ArgumentTypeError(f"a target sensitivity must be in (0, 1], got {number}")
    return number


def _add_common(p: argparse.ArgumentParser, action: str) -> None:
    p.add_argument("--model", required=True, type=Path, help="model folder (X2CT-CLIP or abnormality classifier)")
    p.add_argument("--data", type=Path, help="preprocessed folder (x2ctclip preprocess)")
    default_split = {"calibrate": "valid"}.get(action, "test")
    p.add_argument("--split", default=default_split, help=f"split of --data to evaluate on (default {default_split})")
    if action != "calibrate":
        p.add_argument("--external", type=Path, help="external collection: a CSV of image paths + labels, or a folder "
                                                     "with one (see docs/evaluation.md)")  # fmt: skip
        p.add_argument("--mapping", default="auto", help="label mapping of --external: auto, mimic-ct, radchest-ct or "
                                                         "a JSON file {column: finding or [findings]}")  # fmt: skip
    p.add_argument("--out", type=Path, help="output folder (default MODEL/evaluation)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="images per forward pass")
    p.add_argument("--device", help="cuda, cpu, ... (default: CUDA when available)")
    p.add_argument("--ensemble", default="probabilities", choices=["probabilities", "embeddings"],
                   help="zero-shot prompt ensemble over the config's templates")
    p.add_argument("--dataset-name", help="display name of the test set in the results (model card)")
    p.add_argument("--dataset-type", help="Hub id / identifier of the test set in the results (model card)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_classification(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n-bootstrap", type=non_negative_int, default=1000,
                   help="bootstrap resamples for the CIs (0: none)")
    p.add_argument("--seed", type=non_negative_int, default=1024, help="bootstrap seed")
    p.add_argument("--confidence", type=float_between(0, 1, low_open=True, high_open=True), default=0.95,
                   help="interval level, in (0, 1)")
    p.add_argument("--threshold", type=float_between(0, 1),
                   help="one operating point for F1, in [0, 1] (default: the calibration's thresholds, else 0.5)")
    p.add_argument("--compare", type=Path, help="second model folder: paired DeLong test on the same cases")


def _add_calibration(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", default="temperature", choices=["temperature", "platt"], help="calibration map")
    p.add_argument("--thresholds", default="youden", type=_thresholds_arg,
                   help="operating points: youden, a target sensitivity (e.g. 0.9) or none")
    p.add_argument("--n-bins", type=positive_int, default=15,
                   help="equal-width bins of the ECE and reliability diagram (>= 1)")
    p.add_argument("--no-save", action="store_true", help="do not store the calibration in the model config")


def configure_parser(parser: argparse.ArgumentParser, command: str) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    for action, help_text in ACTIONS.items():
        p = sub.add_parser(action, help=help_text, description=help_text)
        _add_common(p, action)
        if action in ("zeroshot", "all"):
            _add_classification(p)
        if action == "retrieval":
            p.add_argument("--cache", type=Path, help="embedding cache (x2ctclip cache-embeddings) of --data")
        if action == "all":
            p.add_argument("--cache", type=Path, help="embedding cache (x2ctclip cache-embeddings) of --data")
            p.add_argument("--calibration-split", default="valid",
                           help="split of --data to calibrate on ('none': keep the folder's calibration)")
        if action in ("calibrate", "all"):
            _add_calibration(p)


def _cases(args, require_labels: bool = True):
    from x2ctclip.train.evaluation.cases import external_cases, preprocessed_cases

    external = getattr(args, "external", None)
    if (args.data is None) == (external is None):
        raise ValueError(f"evaluate {args.action}: give exactly one of --data PREPROCESSED and --external "
                         "CSV_OR_FOLDER.")
    if args.data is not None:
        return preprocessed_cases(args.data, args.split, args.dataset_name, args.dataset_type)
    return external_cases(external, args.mapping, args.dataset_name, args.dataset_type, require_labels=require_labels)


def run(args) -> int:
    with distributed.distributed_session():
        return _run(args)


def _run(args) -> int:
    # Job modules are imported when the command runs (as in every cli module): they load torch and transformers,
    # which ``x2ctclip --help`` and the other commands do not need.
    from x2ctclip.train.evaluation.calibrate import calibrate, calibration_markdown
    from x2ctclip.train.evaluation.classification import classification_markdown, evaluate_classification
    from x2ctclip.train.evaluation.evaluate import evaluate_all
    from x2ctclip.train.evaluation.retrieval_report import evaluate_retrieval, retrieval_markdown
    from x2ctclip.train.hub.folders import refresh_model_folder  # the card's file table lists calibration.json

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}.")
    progress = False if args.no_progress else None
    common = dict(batch_size=args.batch_size, device=args.device, progress=progress)
    out = args.out
    if args.action == "zeroshot":
        record = evaluate_classification(args.model, _cases(args), out, threshold=args.threshold,
                                            n_bootstrap=args.n_bootstrap, seed=args.seed, confidence=args.confidence,
                                            compare=args.compare, ensemble=args.ensemble, **common)  # fmt: skip
        _print(classification_markdown(record))
    elif args.action == "retrieval":
        record = evaluate_retrieval(args.model, _cases(args, require_labels=False), out, cache=args.cache, **common)
        _print(retrieval_markdown(record))
    elif args.action == "calibrate":
        if args.data is None:
            raise ValueError("evaluate calibrate: --data PREPROCESSED is required (the validation split).")
        cases = _cases(args)
        record = distributed.on_main_then_broadcast(lambda: calibrate(
            args.model, cases, out, method=args.method, thresholds=args.thresholds, n_bins=args.n_bins,
            save=not args.no_save, ensemble=args.ensemble, on_saved=refresh_model_folder, **common))
        _print(calibration_markdown(record))
    else:
        split = None if str(args.calibration_split).lower() == "none" else args.calibration_split
        record = evaluate_all(args.model, data=args.data, split=args.split, calibration_split=split,
                                 cache=args.cache, external=args.external, mapping=args.mapping, out_dir=out,
                                 method=args.method, thresholds=args.thresholds, threshold=args.threshold,
                                 n_bootstrap=args.n_bootstrap, seed=args.seed, confidence=args.confidence,
                                 compare=args.compare, ensemble=args.ensemble, dataset_name=args.dataset_name,
                                 dataset_type=args.dataset_type, save=not args.no_save,
                                 on_saved=refresh_model_folder, **common)  # fmt: skip
        folder = Path(out) if out is not None else Path(args.model) / "evaluation"
        if distributed.is_main():
            _print((folder / "evaluation.md").read_text())
    return 0


def _print(text: str) -> None:
    if distributed.is_main():  # one copy of the report, not one per rank
        print(text)
