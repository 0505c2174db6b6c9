"""``x2ctclip fewshot --model DIR --data PREPROCESSED [--method linear|lora|both] [--fractions ...] [--seeds ...]``:
linear probe and / or LoRA on stratified fractions of the training labels (see :mod:`x2ctclip.train.fewshot.run`).

Example::

    x2ctclip fewshot --model out/model --data out/data/preprocessed --method both --out out/fewshot
"""

from __future__ import annotations

import argparse
from pathlib import Path

from x2ctclip.train.cli.args import float_at_least, float_between, non_negative_int, positive_int


def _fraction(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1], got {value!r}")
    if not 0 < number <= 1:
        raise argparse.ArgumentTypeError(f"a fraction must be in (0, 1] (0.01 = 1 %), got {number}")
    return number


def configure_parser(parser: argparse.ArgumentParser, command: str) -> None:
    # start-up: the job's modules load only once this command is chosen (cli/app.py)
    from x2ctclip.train.fewshot.lora import LoraTrainConfig
    from x2ctclip.train.fewshot.probe import LinearProbeConfig
    from x2ctclip.train.fewshot.splits import FEWSHOT_FRACTIONS, FEWSHOT_SEEDS

    probe, lora = LinearProbeConfig(), LoraTrainConfig()
    parser.add_argument("--model", required=True, type=Path, help="X2CT-CLIP model folder (or a classifier folder)")
    parser.add_argument("--data", required=True, type=Path, help="preprocessed folder (x2ctclip preprocess)")
    parser.add_argument("--out", type=Path, help="output folder (default MODEL/fewshot)")
    parser.add_argument("--method", default="linear", choices=["linear", "lora", "both"], help="adaptation method")
    parser.add_argument("--fractions", nargs="+", type=_fraction, default=list(FEWSHOT_FRACTIONS),
                        help="shares of the training scans (default: 0.01 0.025 0.05 0.1 1.0)")
    parser.add_argument("--seeds", nargs="+", type=non_negative_int, default=list(FEWSHOT_SEEDS),
                        help="one subset per seed")
    parser.add_argument("--train-split", default="train", help="split the subsets are drawn from")
    parser.add_argument("--eval-split", default="test", help="split the runs are evaluated on")
    parser.add_argument("--valid-fraction", type=float, default=0.2,
                        help="hold-out share of each subset, in (0, 1)")
    parser.add_argument("--min-scans", type=positive_int, default=5, help="smallest subset, in scans")
    g = parser.add_argument_group("linear probe")
    g.add_argument("--lr", type=float_at_least(0, open_=True), default=probe.learning_rate, help="AdamW learning rate")
    g.add_argument("--weight-decay", type=float_at_least(0), default=probe.weight_decay, help="AdamW weight decay")
    g.add_argument("--probe-batch-size", type=int, default=probe.batch_size, help="latents per step")
    g.add_argument("--epochs", type=int, default=probe.max_epochs, help="most epochs")
    g.add_argument("--patience", type=int, default=probe.patience, help="early-stopping patience (epochs)")
    g = parser.add_argument_group("LoRA")
    g.add_argument("--lora-r", type=int, default=lora.r, help="adapter rank")
    g.add_argument("--lora-alpha", type=positive_int, default=lora.alpha, help="adapter scaling alpha")
    g.add_argument("--lora-dropout", type=float_between(0, 1, high_open=True), default=lora.dropout,
                   help="adapter dropout, in [0, 1)")
    g.add_argument("--lora-lr", type=float_at_least(0, open_=True), default=lora.learning_rate,
                   help="AdamW learning rate")
    g.add_argument("--lora-batch-size", type=int, default=lora.batch_size, help="images per step")
    g.add_argument("--lora-epochs", type=int, default=lora.max_epochs, help="most epochs")
    g.add_argument("--lora-patience", type=int, default=lora.patience, help="early-stopping patience (epochs)")
    g.add_argument("--lora-mlp", action="store_true", help="also adapt the transformer MLP layers")
    g.add_argument("--lora-targets", nargs="+", help="module names to adapt (default: found from the backbone)")
    g.add_argument("--no-save-adapters", action="store_true", help="do not write the LoRA adapters")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass when encoding")
    parser.add_argument("--device", help="cuda, cpu, ... (default: CUDA when available)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args) -> int:
    # start-up: the job's modules load only once this command is chosen (cli/app.py)
    from x2ctclip.train.fewshot.lora import LoraTrainConfig
    from x2ctclip.train.fewshot.probe import LinearProbeConfig
    from x2ctclip.train.fewshot.run import run_fewshot

    # Checked here (one error line, before the model is loaded) rather than by argparse, whose message differs.
    for name in ("epochs", "patience", "probe_batch_size", "lora_epochs", "lora_patience", "lora_batch_size",
                 "lora_r", "batch_size"):  # fmt: skip
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}.")
    if not 0 < args.valid_fraction < 1:
        raise ValueError(f"--valid-fraction must be in (0, 1), got {args.valid_fraction}.")
    probe = LinearProbeConfig(learning_rate=args.lr, weight_decay=args.weight_decay, batch_size=args.probe_batch_size,
                              max_epochs=args.epochs, patience=args.patience)  # fmt: skip
    lora = LoraTrainConfig(r=args.lora_r, alpha=args.lora_alpha, dropout=args.lora_dropout, learning_rate=args.lora_lr,
                           batch_size=args.lora_batch_size, max_epochs=args.lora_epochs, patience=args.lora_patience,
                           target_modules=args.lora_targets, include_mlp=args.lora_mlp)  # fmt: skip
    methods = ["linear", "lora"] if args.method == "both" else [args.method]
    out = args.out if args.out is not None else Path(args.model) / "fewshot"
    run_fewshot(args.model, args.data, out, methods=methods, fractions=args.fractions, seeds=args.seeds,
                train_split=args.train_split, eval_split=args.eval_split, valid_fraction=args.valid_fraction,
                min_scans=args.min_scans, probe=probe, lora=lora, batch_size=args.batch_size, device=args.device,
                progress=False if args.no_progress else None, save_adapters=not args.no_save_adapters)  # fmt: skip
    print((out / "fewshot.md").read_text())
    print(f"Plot: {out / 'fewshot_auroc.png'}")
    return 0
