"""x2ctclip: chest X-ray models that detect CT-level abnormalities (X2CT-CLIP), as Hugging Face transformers models.

Importing this package registers the configs and models with the transformers auto classes (``AutoConfig``,
``AutoModel``, ``AutoModelForZeroShotImageClassification``, ``AutoModelForImageClassification`` for the supervised
:class:`X2CTCLIPForAbnormalityClassification`) and marks them for remote code, so that ``save_pretrained`` writes
``auto_map`` and copies the modeling files next to the weights.

The package is **lazy**, as transformers itself is: ``import x2ctclip`` loads the configs and the processors, not the
model modules. A model module is imported on first use: an attribute of this package (``x2ctclip.X2CTCLIPModel``,
``from x2ctclip import ...``), or an auto class looking the config up (``AutoModel.from_pretrained(folder)``).
Most of the import time is transformers' own: its image-processor and processor base classes (which the processors
subclass, and ``AutoImageProcessor`` / ``AutoProcessor`` need for the registration) import
``transformers.modeling_utils`` themselves, so the laziness saves the x2ctclip model modules only
(``benchmarks/bench_import_time.py`` measures both).

transformers' ``register`` API takes the model *class*, so the auto-class entries are put in the mappings'
``_extra_content`` as placeholders that import the class when first read (:class:`_LazyModelEntries`); with a
transformers whose mappings lack that dict, the models are registered eagerly instead (same behaviour, slower import).
Whichever way a model module gets imported (also ``import x2ctclip.modeling_ct``), a post-import hook marks its
classes for remote code (``register_for_auto_class``).
"""

from __future__ import annotations

import importlib
import importlib.abc
import sys
from typing import Any

from transformers import AutoConfig

from .configuration_x2ctclip import X2CTCLIPConfig, X2CTCLIPCTConfig
from .findings import CT_RATE_FINDINGS, DEFAULT_PROMPT_TEMPLATES

__version__ = "0.1.0"

# public name -> submodule that defines it (imported on first access)
_LAZY_ATTRIBUTES = {
    "X2CTCLIPLoss": "loss",
    "contrastive_loss": "loss",
    "gather_with_grad": "loss",
    "X2CTCLIPClassificationOutput": "modeling_classification",
    "X2CTCLIPClassificationPrediction": "modeling_classification",
    "X2CTCLIPForAbnormalityClassification": "modeling_classification",
    "X2CTCLIPCTModel": "modeling_ct",
    "X2CTCLIPModel": "modeling_x2ctclip",
    "X2CTCLIPOutput": "modeling_x2ctclip",
    "X2CTCLIPPreTrainedModel": "modeling_x2ctclip",
    "ENSEMBLES": "zero_shot",
    "ZeroShotClassifier": "zero_shot",
    "ZeroShotOutput": "zero_shot",
    "build_prompts": "zero_shot",
    "apply_calibration": "calibration",
    "check_calibration": "calibration",
    "X2CTCLIPPredictor": "predictor",
    "X2CTCLIPPrediction": "predictor",
}

# (auto class, config class, submodule, model class); the auto class's name is what ``register_for_auto_class``
# records (one per model class: the first listed).
_AUTO_MODELS = (
    ("AutoModel", X2CTCLIPCTConfig, "modeling_ct", "X2CTCLIPCTModel"),
    ("AutoModel", X2CTCLIPConfig, "modeling_x2ctclip", "X2CTCLIPModel"),
    ("AutoModelForZeroShotImageClassification", X2CTCLIPConfig, "modeling_x2ctclip", "X2CTCLIPModel"),
    ("AutoModelForImageClassification", X2CTCLIPConfig, "modeling_classification",
     "X2CTCLIPForAbnormalityClassification"),
)  # fmt: skip


class _LazyModelClass:
    """Placeholder for a model class in an auto mapping: (submodule, class name), imported when read."""

    __slots__ = ("module", "name")

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name

    def load(self) -> type:
        return getattr(importlib.import_module(f"{__name__}.{self.module}"), self.name)


class _LazyModelEntries(dict):
    """The ``_extra_content`` dict of a transformers ``_LazyAutoMapping`` whose x2ctclip values are imported on read.

    ``_LazyAutoMapping`` reads this dict through ``in``, ``[]``, ``keys()``, ``values()`` and ``items()`` only; the
    keys (config classes) are real, the values are resolved (and cached) here.
    """

    def __getitem__(self, key):
        value = super().__getitem__(key)
        if isinstance(value, _LazyModelClass):
            value = value.load()
            super().__setitem__(key, value)
        return value

    def get(self, key, default=None):
        return self[key] if key in self else default

    def values(self):
        return [self[k] for k in self.keys()]

    def items(self):
        return [(k, self[k]) for k in self.keys()]


def _register_lazily(auto_class: Any, config_class: type, module: str, name: str) -> None:
    mapping = auto_class._model_mapping
    extra = getattr(mapping, "_extra_content", None)
    if type(extra) is dict:
        mapping._extra_content = extra = _LazyModelEntries(extra)
    if isinstance(extra, _LazyModelEntries):
        if not isinstance(dict.get(extra, config_class), type):  # a model class registered already stays
            dict.__setitem__(extra, config_class, _LazyModelClass(module, name))
    else:  # an unknown transformers layout: register the real class (imports the model module now)
        auto_class.register(config_class, _LazyModelClass(module, name).load(), exist_ok=True)


def _mark_for_remote_code(module: Any) -> None:
    """``register_for_auto_class`` for the model classes ``module`` defines (the first auto class listed wins)."""
    short = module.__name__.rsplit(".", 1)[-1]
    done = set()
    for auto_name, _config_class, submodule, name in _AUTO_MODELS:
        if submodule == short and name not in done and hasattr(module, name):
            getattr(module, name).register_for_auto_class(auto_name)
            done.add(name)


class _RemoteCodeMarker(importlib.abc.MetaPathFinder):
    """Post-import hook: runs :func:`_mark_for_remote_code` once a model module of this package has executed."""

    _targets = {f"{__name__}.{submodule}" for _, _, submodule, _ in _AUTO_MODELS}

    def find_spec(self, fullname, path, target=None):
        if fullname not in self._targets:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
                loader = spec.loader
                exec_module = loader.exec_module

                def exec_and_mark(module, _exec=exec_module):
                    _exec(module)
                    _mark_for_remote_code(module)

                loader.exec_module = exec_and_mark
                return spec
        return None


def _register() -> None:
    import transformers

    for config_class in (X2CTCLIPConfig, X2CTCLIPCTConfig):
        AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
        config_class.register_for_auto_class()
    if not any(isinstance(f, _RemoteCodeMarker) for f in sys.meta_path):
        sys.meta_path.insert(0, _RemoteCodeMarker())
    for auto_name, config_class, module, name in _AUTO_MODELS:
        _register_lazily(getattr(transformers, auto_name), config_class, module, name)
    for module in _AUTO_MODELS:  # modules imported before the hook was installed (a reload of this package)
        loaded = sys.modules.get(f"{__name__}.{module[2]}")
        if loaded is not None:
            _mark_for_remote_code(loaded)


_register()


def __getattr__(name: str) -> Any:
    # PEP 562: the model modules are imported on first access to one of their names
    module = _LAZY_ATTRIBUTES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_ATTRIBUTES))


# The processors register themselves with AutoImageProcessor / AutoProcessor on import; importing them here makes
# `transformers.pipeline(..., model=folder)` work after a plain `import x2ctclip`. They never import the model
# modules. (The remote-code modeling files never import them: this package file is not shipped.)
from . import processors  # noqa: E402,F401

__all__ = ["CT_RATE_FINDINGS", "DEFAULT_PROMPT_TEMPLATES", "X2CTCLIPCTConfig", "X2CTCLIPConfig",
           *sorted(_LAZY_ATTRIBUTES)]  # fmt: skip
