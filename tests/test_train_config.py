"""Training configs: flags generated from the dataclasses, YAML files, flags over YAML over defaults, clear errors."""

import argparse

import pytest
import yaml

from x2ctclip.train.cli.app import main
from x2ctclip.train.training.config import CTCLIPTrainConfig, X2CTTrainConfig, add_config_arguments, config_from_args


def _parse(config_class, argv):
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, config_class)
    return config_from_args(config_class, parser.parse_args(argv))


def test_defaults_are_the_x2ct_clip_settings():
    c = X2CTTrainConfig()
    assert (c.learning_rate, c.weight_decay, c.adam_betas, c.max_grad_norm, c.seed) == (5e-5, 1e-4, (0.9, 0.99), 0.5, 1024)
    assert (c.loss_ct_text_weight, c.loss_cxr_text_weight, c.loss_cxr_ct_weight) == (0.0, 1.0, 1.0)
    assert (c.crop_scale, c.clahe_clip_limit, c.lr_scheduler) == ((0.8, 1.1), 4.0, "constant")


def test_flags_override_yaml_which_overrides_defaults(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"learning_rate": 1e-3, "max-steps": 7, "cxr_config": {"embed_dim": 8},
                                    "report_to": ["csv"]}))
    c = _parse(X2CTTrainConfig, ["--config", str(path), "--max-steps", "9", "--augment", "false",
                                 "--crop-scale", "0.5", "1.0", "--cxr-model", "null"])
    assert c.learning_rate == 1e-3 and c.max_steps == 9  # YAML, then the flag
    assert c.augment is False and c.crop_scale == (0.5, 1.0) and c.cxr_model is None
    assert c.cxr_config == {"embed_dim": 8} and c.report_to == ["csv"]
    assert c.weight_decay == 1e-4  # untouched default
    c2 = _parse(CTCLIPTrainConfig, ["--ct-config", '{"dim": 32}', "--train-logit-scale"])
    assert c2.ct_config == {"dim": 32} and c2.train_logit_scale is True


def test_yaml_round_trip(tmp_path):
    config = X2CTTrainConfig(max_steps=3, cxr_config={"depths": [1, 1]}, adam_betas=(0.8, 0.9))
    config.to_yaml(tmp_path / "c.yaml")
    assert X2CTTrainConfig.from_yaml(tmp_path / "c.yaml") == config


def test_errors_name_the_file_or_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("learning_rat: 0.1\n")
    with pytest.raises(ValueError, match=r"bad.yaml.*learning_rat"):
        X2CTTrainConfig.from_yaml(bad)
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="mapping"):
        X2CTTrainConfig.from_yaml(bad)
    with pytest.raises(ValueError, match="per_device_batch_size"):
        X2CTTrainConfig(per_device_batch_size=0)
    with pytest.raises(ValueError, match="mixed_precision"):
        X2CTTrainConfig(mixed_precision="fp8")
    with pytest.raises(ValueError, match="adam_betas"):
        CTCLIPTrainConfig(adam_betas=(0.9, 1.5))
    with pytest.raises(FileNotFoundError):
        X2CTTrainConfig.from_yaml(tmp_path / "missing.yaml")


def test_cli_prints_the_merged_config_and_reports_errors(tmp_path, capsys):
    assert main(["train", "x2ct", "--print-config", "--max-steps", "4", "--loss-cxr-ct-weight", "0"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["max_steps"] == 4 and printed["loss_cxr_ct_weight"] == 0.0
    assert main(["train", "ctclip", "--data-dir", str(tmp_path / "nowhere"), "--ct-preset", "tiny"]) == 2
    assert "nowhere" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "ctclip", "--mixed-precision", "fp8"])


def test_flags_are_the_ones_hfargumentparser_generates():
    """The flags come from transformers.HfArgumentParser: the same option strings (``--max-steps`` and
    ``--max_steps``, ``--no-augment`` for a switch that defaults to true), parsed the same way."""
    from transformers import HfArgumentParser

    parser = argparse.ArgumentParser()
    add_config_arguments(parser, X2CTTrainConfig)
    ours = {s for a in parser._actions for s in a.option_strings} - {"-h", "--help", "--config"}
    theirs = {s for a in HfArgumentParser(X2CTTrainConfig)._actions for s in a.option_strings} - {"-h", "--help"}
    assert ours == theirs
    c = _parse(X2CTTrainConfig, ["--no-augment", "--max_steps", "5", "--progress-bar", "no"])
    assert c.augment is False and c.max_steps == 5 and c.progress_bar is False
    (hf,) = HfArgumentParser(X2CTTrainConfig).parse_args_into_dataclasses(["--no-augment", "--max_steps", "5"])
    assert (hf.augment, hf.max_steps) == (c.augment, c.max_steps)
