"""Few-shot adaptation of the X2CT-CLIP chest X-ray tower: linear probe and LoRA (``x2ctclip fewshot``).

Protocol (X2CT-CLIP's, for the linear probe):

- **Subsets.** For each fraction (1 %, 2.5 %, 5 %, 10 %, 100 % of the training labels) and each seed (1024, 1234, 4321,
  5678, 8765), a subset of the training *scans* is drawn by iterative stratification (Sechidis et al., 2011:
  :func:`iterative_stratification`), so that every finding keeps its prevalence; 20 % of the subset's scans are held
  out for validation, again stratified. Reconstructions of one scan share its labels and stay together (a scan is
  never in both parts). Subsets have at least ``min_scans`` (5) scans.
- **Linear probe** (:func:`train_linear_probe`): one linear layer (``projection_dim -> 18``) on the frozen,
  L2-normalised CXR latents; binary cross-entropy with logits; AdamW, learning rate 5e-2, batch 4096, up to 100
  epochs, early stopping with patience 20 on the hold-out loss (the weights of the best epoch are kept).
- **LoRA** (:func:`train_lora`, this project's addition): low-rank adapters on the CXR tower's attention projections
  (Swin / ViT: ``q_proj`` / ``k_proj`` / ``v_proj`` / ``o_proj``, ``query`` / ``key`` / ``value`` / ``output.dense``
  in older transformers) or on the convolutions of the residual blocks (ResNet: ``layer.N.convolution``; stem and
  shortcut convolutions excluded), see :func:`lora_target_modules`; the classification head is trained too
  (``modules_to_save=["classifier"]``) and starts from the linear probe of the same subset (LP-FT, Kumar et al. 2022,
  so the adapters do not start from a random head); early stopping on the hold-out loss counts that start as epoch
  0, so a run never ends worse on the hold-out than its linear probe. Batch-norm statistics stay frozen (the adapters
  are all that is saved, so the base model must not change). Defaults: rank 8, alpha 16, dropout 0.1, AdamW 5e-4,
  batch 32, up to 20 epochs, patience 5.
- **Metrics** on the evaluation split (default ``test``): AUROC macro / micro / weighted, average precision, F1 /
  precision / recall at 0.5 (:func:`x2ctclip.train.evaluation.metrics.classification_report`), per seed; mean +- sd over seeds.
  The zero-shot AUROC of the same model (prompt pairs of its config) is the flat baseline.

Outputs of :func:`run_fewshot` (``OUT``): ``fewshot.json`` (settings, every run, the summary; rewritten after each
run, and a rerun with the same settings skips the finished runs), ``fewshot.md`` (mean +- sd table),
``fewshot_auroc.png`` (macro AUROC against the fraction), ``heads/linear_f{fraction}_s{seed}.safetensors`` and
``adapters/lora_f{fraction}_s{seed}/`` (PEFT folders). :func:`load_fewshot_classifier` turns either into an
:class:`x2ctclip.X2CTCLIPForAbnormalityClassification` (LoRA merged with ``merge_and_unload`` by default), which
``save_pretrained`` writes as a folder that ``AutoModelForImageClassification.from_pretrained`` loads.

May import: the library, ``x2ctclip.train.data`` and ``x2ctclip.train.evaluation``.
"""

from ..compat import package_getattr as _package_getattr

# The names of the old module x2ctclip.train.fewshot keep working for one release, with a DeprecationWarning.
__getattr__ = _package_getattr(__name__)
