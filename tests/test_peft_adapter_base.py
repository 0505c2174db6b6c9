"""LoRA adapters saved by the few-shot runner record a portable ``base_model_name_or_path`` (the Hub id, or the base
folder's name), read back with peft's own ``PeftConfig`` / ``PeftModel`` loaders."""

from __future__ import annotations

import json
import os

import torch
from peft import LoraConfig, PeftConfig, PeftModel, get_peft_model

from tiny_configs import TINY_SWIN, tiny_config
from x2ctclip import X2CTCLIPForAbnormalityClassification, X2CTCLIPModel
from x2ctclip.train.fewshot.lora import lora_target_modules, portable_base_model_name, save_adapter


def test_saved_adapter_names_the_base_folder_not_its_absolute_path(tmp_path):
    torch.manual_seed(0)
    base_dir = tmp_path / "deep" / "x2ctclip-tiny"
    X2CTCLIPModel(tiny_config(cxr=TINY_SWIN, towers=["cxr", "text"])).save_pretrained(base_dir)
    classifier = X2CTCLIPForAbnormalityClassification.from_x2ctclip(X2CTCLIPModel.from_pretrained(base_dir)).eval()
    lora = LoraConfig(r=2, lora_alpha=4, target_modules=lora_target_modules(classifier), modules_to_save=["classifier"])
    peft_model = get_peft_model(classifier, lora)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_()  # a non-trivial adapter, so that loading it back is visible in the logits
    out = save_adapter(peft_model, base_dir, tmp_path / "adapters" / "lora_f1_s0")

    recorded = json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert recorded == "x2ctclip-tiny" and not os.path.isabs(recorded) and str(tmp_path) not in recorded
    assert PeftConfig.from_pretrained(str(out)).base_model_name_or_path == "x2ctclip-tiny"
    # The adapter still loads onto the base model (peft does not need the recorded name to be a path).
    fresh = X2CTCLIPForAbnormalityClassification.from_x2ctclip(X2CTCLIPModel.from_pretrained(base_dir)).eval()
    loaded = PeftModel.from_pretrained(fresh, str(out)).eval()
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values=pixels).logits, peft_model(pixel_values=pixels).logits)


def test_hub_ids_are_kept_as_given(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no folder of that name here: the string is a Hub id
    assert portable_base_model_name("someone/x2ctclip-base") == "someone/x2ctclip-base"
    (tmp_path / "local-model").mkdir()
    assert portable_base_model_name("local-model") == "local-model"
    assert portable_base_model_name(tmp_path / "local-model" / ".") == "local-model"
