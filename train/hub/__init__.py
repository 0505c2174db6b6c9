"""Hugging Face Hub packaging: a saved X2CT-CLIP folder as a complete, honest Hub model repository.

- :func:`save_for_hub` writes ``model.safetensors``, ``config.json`` (with ``auto_map`` for ``AutoConfig``,
  ``AutoModel`` and ``AutoModelForZeroShotImageClassification``), the modeling and processing files for remote code,
  the processor and tokenizer files and a ``README.md`` model card, then checks the folder
  (:func:`validate_hub_folder`) before it appears under its final name.
- :func:`build_model_card` / :func:`write_ctclip_model_card` make the cards (``huggingface_hub.ModelCard`` from
  ``resources/model_card_template.md``): metadata (license, ``library_name``, ``pipeline_tag``, tags, base models,
  data sets, a ``model-index`` only with results read from an evaluation JSON), intended use and limits, how the
  training CXRs were simulated, the prompt set of the config, and a usage snippet that runs against the folder.
- :func:`validate_card` checks card metadata locally (no network: ``ModelCard.validate`` posts to the Hub).
- :func:`push_folder` uploads with ``HfApi.create_repo`` + ``HfApi.upload_folder``; ``dry_run=True`` lists the files
  (with sizes) that would go up and validates everything without any network access.

The evaluation JSON read by :func:`load_evaluation_results` is documented in ``docs/hub.md``. The commands that write
model folders (quickstart, train, assemble, convert-ctclip, evaluate calibrate) finish them through
:mod:`x2ctclip.train.hub.folders`, which uses this module's card builder and folder check.

May import: the library, ``x2ctclip.train.data`` and ``x2ctclip.train.evaluation``.
"""

from ..compat import package_getattr as _package_getattr

# The names of the old module x2ctclip.train.hub keep working for one release, with a DeprecationWarning.
__getattr__ = _package_getattr(__name__)
