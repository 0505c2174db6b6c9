"""x2ctclip.train: the application that makes and uses models (data, synthetic data, training, evaluation, few-shot,
Hub export, the ``x2ctclip`` command). It may import the library (``x2ctclip``, ``x2ctclip.processors``); the library
never imports it.

Sub-packages, named for their jobs; arrows run one way (cli -> jobs -> data -> library), see docs/architecture.md:

- ``data``: the CT-RATE layout, tables, streaming, preprocessing into shards, the frozen-tower embedding cache.
- ``synthetic``: synthetic CT-RATE studies (anatomy, findings, reports) and their writer.
- ``training``: stage configs, the Accelerate trainer and the two stages (CT-CLIP, X2CT-CLIP).
- ``evaluation``: cases, zero-shot classification, retrieval, calibration fitting, intervals, external sets, reports.
- ``fewshot``: label fractions, the linear probe and LoRA.
- ``hub``: model cards, folder checks, export, upload, the Space folder and its assets.
- ``cli``: the ``x2ctclip`` command, one module per command group.
- ``quickstart``: the main job, the whole method on synthetic data in one call.
"""

from .compat import install as _install_old_module_paths

# Old module paths (x2ctclip.train.evaluate_model, ...) keep working for one release, with a DeprecationWarning.
_install_old_module_paths()
