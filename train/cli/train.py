"""``x2ctclip train ctclip|x2ct [--config run.yaml] [--OPTION VALUE ...]``.

- ``ctclip``: stage 1, align CT and report towers (:class:`~x2ctclip.train.training.config.CTCLIPTrainConfig`).
- ``x2ct``: stage 2, the paper's X2CT-CLIP stage (:class:`~x2ctclip.train.training.config.X2CTTrainConfig`).

Every config field is a flag; ``--config`` reads a YAML file of the same fields first and flags override it.
``--print-config`` prints the merged config as YAML and exits. For several processes launch the same command with
``accelerate launch -m x2ctclip.train.cli train ...`` or ``torchrun --nproc_per_node N -m x2ctclip.train.cli train ...``
(see docs/training.md).
"""

from __future__ import annotations

import json
import sys

import yaml

from x2ctclip.train.training.config import CTCLIPTrainConfig, X2CTTrainConfig, add_config_arguments, config_from_args

STAGES = {
    "ctclip": (CTCLIPTrainConfig, "stage 1: align the CT and report towers (CT-CLIP)"),
    "x2ct": (X2CTTrainConfig, "stage 2: align a CXR tower to the frozen CT-CLIP towers (X2CT-CLIP)"),
}


def configure_parser(parser, command):
    sub = parser.add_subparsers(dest="stage", metavar="STAGE", required=True)
    for name, (config_class, help_text) in STAGES.items():
        stage_parser = sub.add_parser(name, help=help_text, description=help_text)
        stage_parser.add_argument("--print-config", action="store_true", help="print the merged config as YAML and exit")
        add_config_arguments(stage_parser, config_class)


def run(args) -> int:
    config_class, _ = STAGES[args.stage]
    config = config_from_args(config_class, args)
    if args.print_config:
        print(yaml.safe_dump(config.to_dict(), sort_keys=False), end="")
        return 0
    if args.stage == "ctclip":
        from x2ctclip.train.training.ctclip_stage import train_ctclip as train
    else:
        from x2ctclip.train.training.x2ct_stage import train_x2ct as train
    result = train(config)
    from accelerate import PartialState

    if PartialState().is_main_process:
        summary = {k: v for k, v in result.to_dict().items() if k != "eval_metrics"}
        summary["eval_metrics"] = {k: round(v, 4) for k, v in result.eval_metrics.items() if isinstance(v, float)}
        print(json.dumps(summary, indent=2), file=sys.stdout)
    return 0
