"""Every ``x2ctclip`` sub-command on missing, empty and wrong paths and on out-of-range numbers: a non-zero exit,
exactly one ``x2ctclip CMD...: error:`` line on stderr, and no traceback (issue 15).

The cases run in-process through ``cli.main`` (an exception escaping it is a test failure: it would be a traceback);
a few run as a subprocess to see what a user sees.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from scripts.eval_fixtures import make_model, make_preprocessed

from x2ctclip.train.cli import app as cli



@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    """Missing, empty and wrong inputs, and one valid tiny preprocessed folder (for the model-folder cases)."""
    root = tmp_path_factory.mktemp("cli_errors")
    (root / "empty.bin").write_bytes(b"")
    (root / "empty_dir").mkdir()
    (root / "garbage.bin").write_bytes(os.urandom(2048))
    (root / "garbage.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{notjson" + os.urandom(64))
    (root / "a_file.txt").write_text("not a folder\n")
    (root / "not_yaml.yaml").write_text("just: [unclosed\n")
    (root / "list.yaml").write_text("- 1\n- 2\n")
    (root / "empty_config").mkdir()
    (root / "empty_config" / "config.json").write_text("{}")
    (root / "bad_json").mkdir()
    (root / "bad_json" / "config.json").write_text("{not json")
    data = make_preprocessed(root / "data", {"train": 8, "valid": 4, "test": 4})
    model = make_model(root / "model")
    # A valid CT-RATE layout (2 + 1 tiny synthetic CTs), so that the numeric cases fail on the number alone.
    assert cli.main(["make-synthetic", str(root / "ctrate"), "--n-train", "2", "--n-valid", "1", "--shape", "16", "32",
                     "32", "--no-progress"]) == 0  # fmt: skip
    named = {p.name: p for p in root.iterdir()}
    return {"root": root, "data": data, "model": model, **named, "missing": root / "missing"}


def run_main(capsys, argv: list[str]) -> tuple[int, list[str]]:
    """``cli.main(argv)`` -> (exit status, stderr lines); an escaping exception fails the test (a traceback)."""
    try:
        status = cli.main([str(a) for a in argv])
    except SystemExit as exit_:  # argparse errors
        status = exit_.code
    except BaseException as error:  # noqa: BLE001 - anything else would reach the user as a traceback
        pytest.fail(f"x2ctclip {' '.join(map(str, argv))}: raised {type(error).__name__}: {error}")
    captured = capsys.readouterr()
    return status, captured.err.splitlines()


def assert_one_error_line(command: str, status, lines: list[str], names: str | None = None) -> str:
    assert status not in (0, None), f"exit status {status}"
    assert not any("Traceback" in line for line in lines), "\n".join(lines)
    errors = [line for line in lines if "error:" in line]
    assert len(errors) == 1, "\n".join(lines)
    line = errors[0]
    assert line.startswith(f"x2ctclip {command}"), line
    if names is not None:  # a flag may be named as the option (--cxr-size) or as the parameter (cxr_size)
        assert names in line or names.replace("-", "_") in line, f"{names!r} not in {line!r}"
    return line


# (command words, extra args, the name the line must contain or None); paths are keys of the fixture.
CASES = [
    # convert-ctclip CHECKPOINT OUT
    pytest.param("convert-ctclip", ["{missing}", "{root}/out_convert"], "missing", id="convert-missing"),
    pytest.param("convert-ctclip", ["{empty.bin}", "{root}/out_convert"], "empty.bin", id="convert-empty"),
    pytest.param("convert-ctclip", ["{garbage.bin}", "{root}/out_convert"], "garbage.bin", id="convert-garbage"),
    pytest.param("convert-ctclip", ["{garbage.safetensors}", "{root}/out_convert"], "garbage.safetensors",
                 id="convert-garbage-safetensors"),
    # assemble OUT --ctclip DIR --cxr-config JSON
    pytest.param("assemble", ["{root}/out_assemble", "--ctclip", "{missing}", "--cxr-config", "{missing}"], "missing",
                 id="assemble-missing"),
    pytest.param("assemble", ["{root}/out_assemble", "--ctclip", "{empty_dir}", "--cxr-config", "{a_file.txt}"],
                 None, id="assemble-empty"),
    pytest.param("assemble", ["{root}/out_assemble", "--ctclip", "{a_file.txt}", "--cxr-config", "{a_file.txt}"],
                 "a_file.txt", id="assemble-wrong"),
    # push FOLDER REPO --dry-run
    pytest.param("push", ["{missing}", "me/model", "--dry-run"], "missing", id="push-missing"),
    pytest.param("push", ["{empty_dir}", "me/model", "--dry-run"], "empty_dir", id="push-empty"),
    pytest.param("push", ["{a_file.txt}", "me/model", "--dry-run"], "a_file.txt", id="push-file"),
    pytest.param("push", ["{empty_config}", "me/model", "--dry-run"], "empty_config", id="push-empty-config"),
    # space OUT --model DIR_OR_REPO
    pytest.param("space", ["{root}/out_space1", "--model", "{missing}"], "missing", id="space-missing"),
    pytest.param("space", ["{root}/out_space2", "--model", "{empty_dir}"], "empty_dir", id="space-empty"),
    pytest.param("space", ["{a_file.txt}", "--model", "{model}"], "a_file.txt", id="space-out-file"),
    # demo-assets MODEL --data PRE
    pytest.param("demo-assets", ["{missing}", "--data", "{data}"], "missing", id="demo-assets-missing"),
    pytest.param("demo-assets", ["{empty_config}", "--data", "{data}"], "empty_config", id="demo-assets-empty-config"),
    pytest.param("demo-assets", ["{model}", "--data", "{empty_dir}"], "empty_dir", id="demo-assets-empty-data"),
    # preprocess DATA_ROOT OUT
    pytest.param("preprocess", ["{missing}", "{root}/out_pre"], "missing", id="preprocess-missing"),
    pytest.param("preprocess", ["{empty_dir}", "{root}/out_pre"], "empty_dir", id="preprocess-empty"),
    pytest.param("preprocess", ["{a_file.txt}", "{root}/out_pre"], "a_file.txt", id="preprocess-file"),
    pytest.param("preprocess", ["{ctrate}", "{root}/out_pre1", "--cxr-size", "0"], "cxr-size",
                 id="preprocess-cxr-size-0"),
    pytest.param("preprocess", ["{ctrate}", "{root}/out_pre2", "--workers", "-1"], "workers",
                 id="preprocess-workers-negative"),
    pytest.param("preprocess", ["{ctrate}", "{root}/out_pre3", "--shape", "0", "8", "8"], "shape",
                 id="preprocess-shape-0"),
    pytest.param("preprocess", ["{ctrate}", "{root}/out_pre4", "--shard-size", "0"], "shard-size",
                 id="preprocess-shard-size-0"),
    # cache-embeddings --model DIR --data DIR --out DIR
    pytest.param("cache-embeddings", ["--model", "{missing}", "--data", "{data}", "--out", "{root}/out_cache"],
                 "missing", id="cache-missing-model"),
    pytest.param("cache-embeddings", ["--model", "{empty_dir}", "--data", "{data}", "--out", "{root}/out_cache"],
                 "empty_dir", id="cache-empty-model"),
    pytest.param("cache-embeddings", ["--model", "{empty_config}", "--data", "{data}", "--out", "{root}/out_cache"],
                 "empty_config", id="cache-empty-config"),
    pytest.param("cache-embeddings", ["--model", "{empty_dir}", "--data", "{missing}", "--out", "{root}/out_cache"],
                 None, id="cache-missing-data"),
    pytest.param("cache-embeddings", ["--model", "{model}", "--data", "{data}", "--out", "{root}/out_cache1",
                                      "--batch-size", "0"], "batch-size", id="cache-batch-size-0"),
    pytest.param("cache-embeddings", ["--model", "{model}", "--data", "{data}", "--out", "{root}/out_cache2",
                                      "--device", "bogus"], "bogus", id="cache-device-bogus"),
    # make-synthetic OUT --n-train N --n-valid N
    pytest.param("make-synthetic", ["{a_file.txt}/sub", "--n-train", "1", "--n-valid", "1"], "a_file.txt",
                 id="synthetic-file-parent"),
    pytest.param("make-synthetic", ["{a_file.txt}", "--n-train", "1", "--n-valid", "1"], "a_file.txt",
                 id="synthetic-out-is-file"),
    pytest.param("make-synthetic", ["{root}/out_syn1", "--n-train", "-1", "--n-valid", "1"], "n-train",
                 id="synthetic-n-train-negative"),
    pytest.param("make-synthetic", ["{root}/out_syn2", "--n-train", "1", "--n-valid", "1", "--shape", "0", "8", "8"],
                 "shape", id="synthetic-shape-0"),
    pytest.param("make-synthetic", ["{root}/out_syn3", "--n-train", "1", "--n-valid", "1", "--workers", "0"],
                 "workers", id="synthetic-workers-0"),
    pytest.param("make-synthetic", ["{ctrate}", "--n-train", "2", "--n-valid", "1", "--shape", "16", "32", "32",
                                    "--seed", "5"], "seed", id="synthetic-rerun-other-seed"),
    # train ctclip|x2ct
    pytest.param("train", ["ctclip", "--config", "{missing}"], "missing", id="train-config-missing"),
    pytest.param("train", ["ctclip", "--config", "{not_yaml.yaml}"], "not_yaml.yaml", id="train-config-not-yaml"),
    pytest.param("train", ["x2ct", "--config", "{list.yaml}"], "list.yaml", id="train-config-a-list"),
    pytest.param("train", ["x2ct", "--config", "{empty.bin}"], None, id="train-config-empty"),
    pytest.param("train", ["ctclip", "--data-dir", "{missing}", "--output-dir", "{root}/out_train"], None,
                 id="train-data-missing"),
    pytest.param("train", ["x2ct", "--data-dir", "{data}", "--learning-rate", "-1"], None, id="train-lr-negative"),
    # quickstart --out DIR
    pytest.param("quickstart", ["--out", "{a_file.txt}"], "a_file.txt", id="quickstart-out-file"),
    pytest.param("quickstart", ["--out", "{a_file.txt}/sub"], "a_file.txt", id="quickstart-out-under-file"),
    pytest.param("quickstart", ["--out", "{root}/qs", "--workers", "0"], "--workers", id="quickstart-workers-0"),
    pytest.param("quickstart", ["--out", "{root}/qs", "--seed", "-1"], "--seed", id="quickstart-seed-negative"),
    # evaluate zeroshot|retrieval|calibrate|all
    pytest.param("evaluate", ["zeroshot", "--model", "{missing}", "--data", "{data}"], "missing",
                 id="evaluate-model-missing"),
    pytest.param("evaluate", ["zeroshot", "--model", "{empty_dir}", "--data", "{data}"], "empty_dir",
                 id="evaluate-model-empty"),
    pytest.param("evaluate", ["zeroshot", "--model", "{empty_config}", "--data", "{data}"], "config.json",
                 id="evaluate-config-{}"),
    pytest.param("evaluate", ["calibrate", "--model", "{bad_json}", "--data", "{data}"], "config.json",
                 id="evaluate-config-bad-json"),
    pytest.param("evaluate", ["retrieval", "--model", "{empty_config}", "--data", "{missing}"], "missing",
                 id="evaluate-data-missing"),
    pytest.param("evaluate", ["zeroshot", "--model", "{empty_config}", "--external", "{garbage.bin}"], "garbage.bin",
                 id="evaluate-external-garbage"),
    pytest.param("evaluate", ["calibrate", "--model", "{empty_config}", "--data", "{data}", "--n-bins", "0"],
                 "--n-bins", id="evaluate-n-bins-0"),
    pytest.param("evaluate", ["zeroshot", "--model", "{empty_config}", "--data", "{data}", "--n-bootstrap", "-5"],
                 "--n-bootstrap", id="evaluate-n-bootstrap-negative"),
    pytest.param("evaluate", ["zeroshot", "--model", "{empty_config}", "--data", "{data}", "--confidence", "1.5"],
                 "--confidence", id="evaluate-confidence-1.5"),
    pytest.param("evaluate", ["all", "--model", "{empty_config}", "--data", "{data}", "--batch-size", "0"],
                 "--batch-size", id="evaluate-batch-size-0"),
    pytest.param("evaluate", ["zeroshot", "--model", "{empty_config}", "--data", "{data}", "--threshold", "nan"],
                 "--threshold", id="evaluate-threshold-nan"),
    # fewshot --model DIR --data DIR
    pytest.param("fewshot", ["--model", "{missing}", "--data", "{data}"], "missing", id="fewshot-model-missing"),
    pytest.param("fewshot", ["--model", "{empty_config}", "--data", "{data}"], "config.json",
                 id="fewshot-config-{}"),
    pytest.param("fewshot", ["--model", "{empty_config}", "--data", "{missing}"], None, id="fewshot-data-missing"),
    pytest.param("fewshot", ["--model", "{empty_config}", "--data", "{data}", "--min-scans", "-1"], "--min-scans",
                 id="fewshot-min-scans-negative"),
    pytest.param("fewshot", ["--model", "{empty_config}", "--data", "{data}", "--valid-fraction", "1"],
                 "--valid-fraction", id="fewshot-valid-fraction-1"),
    pytest.param("fewshot", ["--model", "{empty_config}", "--data", "{data}", "--fractions", "0"], "--fractions",
                 id="fewshot-fraction-0"),
    pytest.param("fewshot", ["--model", "{empty_config}", "--data", "{data}", "--lora-r", "0"], "--lora-r",
                 id="fewshot-lora-r-0"),
]


def _expand(words: list[str], paths) -> list[str]:
    out = []
    for word in words:
        for key, value in paths.items():
            word = word.replace("{" + key + "}", str(value))
        out.append(word)
    return out


def test_every_command_has_cases():
    covered = {case.values[0] for case in CASES}
    assert covered == set(cli.COMMANDS), f"no cases for {set(cli.COMMANDS) - covered}"


@pytest.mark.parametrize("command, words, names", CASES)
def test_bad_input_gives_one_error_line(paths, capsys, monkeypatch, command, words, names):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("X2CTCLIP_DEBUG", raising=False)
    status, lines = run_main(capsys, [command, *_expand(words, paths)])
    assert_one_error_line(command, status, lines, names)


def test_debug_flag_and_env_show_the_traceback(paths, capsys, monkeypatch):
    argv = ["evaluate", "zeroshot", "--model", str(paths["empty_config"]), "--data", str(paths["data"])]
    with pytest.raises(ValueError, match="config.json"):
        cli.main(["--debug", *argv])
    monkeypatch.setenv("X2CTCLIP_DEBUG", "1")
    with pytest.raises(ValueError, match="config.json"):
        cli.main(argv)
    monkeypatch.setenv("X2CTCLIP_DEBUG", "0")
    status, lines = run_main(capsys, argv)
    assert_one_error_line("evaluate", status, lines, "config.json")


def test_error_line_folds_messages_and_names_files():
    assert cli.error_line(ValueError("a\n  b\n")) == "a b"
    assert cli.error_line(FileNotFoundError(2, "No such file or directory", "/x/y.bin")) == (
        "/x/y.bin: No such file or directory"
    )
    assert cli.error_line(MemoryError()).startswith("out of memory")
    assert cli.error_line(RuntimeError()) == "RuntimeError"


def test_programming_errors_keep_their_traceback(monkeypatch):
    """A TypeError inside a command is a bug, not bad input: it is not turned into a polite line."""
    from x2ctclip.train.cli import push as cmd_push

    def broken(args):
        raise TypeError("a bug")

    monkeypatch.setattr(cmd_push, "run", broken)
    with pytest.raises(TypeError, match="a bug"):
        cli.main(["push", "folder", "me/model"])


@pytest.mark.parametrize(
    "argv, names",
    [(["evaluate", "calibrate", "--model", "{empty_config}", "--data", "{data}", "--n-bins", "0"], "--n-bins"),
     (["quickstart", "--out", "{a_file.txt}"], "a_file.txt"),
     (["evaluate", "zeroshot", "--model", "{empty_config}", "--data", "{data}"], "config.json")],
)  # fmt: skip
def test_what_the_user_sees_in_a_subprocess(paths, argv, names):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("X2CTCLIP_DEBUG", None)
    result = subprocess.run([sys.executable, "-m", "x2ctclip.train.cli", *_expand(argv, paths)], capture_output=True,
                            text=True, env=env, timeout=300)  # fmt: skip
    assert_one_error_line(argv[0], result.returncode, result.stderr.splitlines(), names)
    assert result.stdout == ""


def test_empty_config_json_is_one_clear_line(paths):
    from x2ctclip.train.evaluation.models import load_model

    with pytest.raises(ValueError, match=r"empty_config/config\.json: not an X2CT-CLIP model config \(model_type "
                                         r"None, expected 'x2ctclip'\)"):  # fmt: skip
        load_model(paths["empty_config"])
    (paths["root"] / "array_config").mkdir(exist_ok=True)
    (paths["root"] / "array_config" / "config.json").write_text(json.dumps([1, 2]))
    with pytest.raises(ValueError, match="model_type 'list'"):
        load_model(paths["root"] / "array_config")
