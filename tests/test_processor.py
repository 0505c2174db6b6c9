"""X2CTCLIPProcessor: routing of images / volumes / text, save and load, AutoProcessor, Hub remote code."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from transformers import AutoProcessor

from x2ctclip.processors import (
    X2CTCLIPImageProcessor,
    X2CTCLIPProcessor,
    X2CTCLIPVolumeProcessor,
    build_wordpiece_tokenizer,
    load_report_tokenizer,
)

TEXTS = ["The lungs are clear (no effusion).", "Mild cardiomegaly; the heart is enlarged."]


def tiny_processor(**kwargs) -> X2CTCLIPProcessor:
    """Small output sizes so that the tests stay fast: 32 x 32 CXRs, 8 x 16 x 16 CTs, 24 tokens."""
    tokenizer = build_wordpiece_tokenizer(TEXTS * 2, vocab_size=250)
    return X2CTCLIPProcessor(
        image_processor=X2CTCLIPImageProcessor(size=32, crop_size=32),
        volume_image_processor=X2CTCLIPVolumeProcessor(target_shape=(8, 16, 16)),
        tokenizer=tokenizer,
        max_length=24,
        **kwargs,
    )


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(0)
    cxr = rng.random((40, 50)).astype(np.float32)
    ct = rng.uniform(-1000, 1000, size=(12, 20, 20)).astype(np.float32)  # HU, (z, y, x), 1.5 x 0.75 x 0.75 mm
    return cxr, ct


def test_all_three_modalities_in_one_batch_feature(inputs):
    cxr, ct = inputs
    processor = tiny_processor()
    batch = processor(images=[cxr, cxr.T.copy()], volumes=ct, text=TEXTS, spacing=(1.5, 0.75, 0.75))
    assert set(batch) == {"pixel_values", "ct_values", "input_ids", "attention_mask"}
    assert tuple(batch["pixel_values"].shape) == (2, 3, 32, 32) and batch["pixel_values"].dtype == torch.float32
    assert tuple(batch["ct_values"].shape) == (1, 1, 8, 16, 16) and batch["ct_values"].dtype == torch.float32
    assert tuple(batch["input_ids"].shape) == tuple(batch["attention_mask"].shape) == (2, 24)
    assert batch["ct_values"].min() >= -1 and batch["ct_values"].max() <= 1
    # Same numbers as the sub-processors on their own.
    torch.testing.assert_close(batch["pixel_values"], processor.image_processor([cxr, cxr.T.copy()])["pixel_values"])
    alone = processor.volume_processor(ct, spacing=(1.5, 0.75, 0.75))["ct_values"]
    torch.testing.assert_close(batch["ct_values"], alone)
    assert processor.volume_processor is processor.volume_image_processor


def test_only_what_was_given_and_kwargs_routing(inputs):
    cxr, ct = inputs
    processor = tiny_processor()
    assert set(processor(text="Lungs clear.")) == {"input_ids", "attention_mask"}
    assert set(processor(images=cxr)) == {"pixel_values"}
    assert set(processor(volumes=ct, spacing=(3.0, 1.5, 1.5))) == {"ct_values"}
    routed = processor(images=cxr, text=TEXTS, crop_size=16, size=16, max_length=10, return_tensors="np")
    assert routed["pixel_values"].shape == (1, 3, 16, 16) and routed["input_ids"].shape == (2, 10)
    assert isinstance(routed["input_ids"], np.ndarray)
    with pytest.raises(ValueError, match="at least one of images, volumes or text"):
        processor()
    with pytest.raises(ValueError, match="unknown argument 'colour'"):
        processor(text="x", colour="red")
    with pytest.raises(ValueError, match=r"text\[1\] is a float"):
        processor(text=["Lungs clear.", float("nan")])
    with pytest.raises(ValueError, match="needs the report tokenizer"):
        X2CTCLIPProcessor()


def test_text_is_cleaned_and_tokenised_ct_clip_style():
    processor = X2CTCLIPProcessor(tokenizer=load_report_tokenizer("all-MiniLM-L6-v2"))
    batch = processor(text=['Nodule (4 mm) "stable".', "Nodule 4 mm stable."])
    assert tuple(batch["input_ids"].shape) == (2, 512)  # CT-CLIP: padding="max_length", max_length=512
    torch.testing.assert_close(batch["input_ids"][0], batch["input_ids"][1])
    raw = X2CTCLIPProcessor(tokenizer=processor.tokenizer, clean_text=False)(text='Nodule (4 mm) "stable".')
    assert (raw["attention_mask"].sum() > batch["attention_mask"][0].sum()).item()  # ( ) " " kept as tokens
    long = processor(text="word " * 1000)
    assert long["attention_mask"].all() and long["input_ids"][0, -1] == processor.tokenizer.sep_token_id


def test_save_and_auto_processor_round_trip(tmp_path, inputs):
    cxr, ct = inputs
    processor = tiny_processor(clean_text=False)
    processor.save_pretrained(tmp_path)
    saved = sorted(os.listdir(tmp_path))
    # The code travels with the config (Hub remote code): this module and everything it imports, flat.
    for module in ("processing_x2ctclip.py", "image_processing_cxr.py", "image_io.py", "image_processing_volume.py",
                   "volume_io.py", "ct_volume.py", "nifti_io.py", "dicom_series.py", "tokenization.py"):  # fmt: skip
        assert module in saved
    config = json.loads((tmp_path / "processor_config.json").read_text())
    assert config["auto_map"]["AutoProcessor"] == "processing_x2ctclip.X2CTCLIPProcessor"
    assert config["image_processor"]["auto_map"]["AutoImageProcessor"] == "image_processing_cxr.X2CTCLIPImageProcessor"
    assert config["volume_image_processor"]["image_processor_type"] == "X2CTCLIPVolumeProcessor"
    assert (config["max_length"], config["padding"], config["truncation"], config["clean_text"]) == (
        24, "max_length", True, False,
    )  # fmt: skip

    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert type(loaded) is X2CTCLIPProcessor
    assert loaded.image_processor.to_dict() == processor.image_processor.to_dict()
    assert loaded.volume_processor.to_dict() == processor.volume_processor.to_dict()
    assert loaded.tokenizer.get_vocab() == processor.tokenizer.get_vocab()
    assert (loaded.max_length, loaded.clean_text) == (24, False)
    kwargs = dict(images=cxr, volumes=ct, text=TEXTS, spacing=(1.5, 0.75, 0.75))
    expected, got = processor(**kwargs), loaded(**kwargs)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key])


_REMOTE_SCRIPT = textwrap.dedent(
    """
    import importlib.abc
    import sys

    # A user without x2ctclip, whether it is installed normally or in editable mode: refuse to import it.
    class HideX2CTCLIP(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "x2ctclip" or name.startswith("x2ctclip."):
                raise ModuleNotFoundError(f"x2ctclip is hidden in this test ({name})")

    sys.meta_path.insert(0, HideX2CTCLIP())
    try:
        import x2ctclip  # noqa: F401
    except ModuleNotFoundError:
        pass
    else:
        raise SystemExit("x2ctclip is importable in the clean interpreter")

    import numpy as np
    from transformers import AutoProcessor

    folder, out = sys.argv[1], sys.argv[2]
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    assert type(processor).__module__.startswith("transformers_modules."), type(processor).__module__
    data = np.load(folder + "/inputs.npz")
    batch = processor(images=data["cxr"], volumes=data["ct"], text=["The lungs are clear (no effusion)."],
                      spacing=(1.5, 0.75, 0.75), return_tensors="np")
    np.savez(out, **{key: np.asarray(value) for key, value in batch.items()})
    print(type(processor).__module__, type(processor.volume_processor).__name__)
    """
)


@pytest.mark.slow
def test_loads_as_remote_code_without_x2ctclip(tmp_path, inputs):
    cxr, ct = inputs
    processor = tiny_processor()
    folder = tmp_path / "x2ctclip-processor"
    processor.save_pretrained(folder)
    np.savez(folder / "inputs.npz", cxr=cxr, ct=ct)
    script = tmp_path / "load_remote.py"
    script.write_text(_REMOTE_SCRIPT)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"), PYTHONPATH="")
    # -I: isolated mode (no PYTHONPATH, no user site, no current folder on sys.path); run from an unrelated folder.
    result = subprocess.run(
        [sys.executable, "-I", str(script), str(folder), str(tmp_path / "out.npz")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "transformers_modules." in result.stdout and "X2CTCLIPVolumeProcessor" in result.stdout
    remote = np.load(tmp_path / "out.npz")
    expected = processor(
        images=cxr, volumes=ct, text=["The lungs are clear (no effusion)."], spacing=(1.5, 0.75, 0.75),
        return_tensors="np",
    )  # fmt: skip
    assert set(remote.files) == set(expected)
    for key in expected:
        np.testing.assert_allclose(remote[key], expected[key], atol=1e-6)
