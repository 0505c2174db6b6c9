"""The data layer: CT-RATE as Hugging Face ``datasets``, streamed, preprocessed once, or reduced to cached latents.

Three views of one data set, none of which holds it in memory:

- :func:`stream_ct_rate`: a ``datasets.IterableDataset`` over the raw CT-RATE layout (a local folder, a ``file://``
  URL or a Hub dataset repository ``hf://datasets/{org}/{repo}[@{revision}]/{folder}``). Every file is opened through
  fsspec (``huggingface_hub.HfFileSystem`` for ``hf://``), one at a time, when the iteration reaches it: nothing is
  downloaded ahead. The dataset is sharded by file (one shard per reconstruction), so DataLoader workers and
  ``datasets.distributed.split_dataset_by_node`` receive disjoint sets of files.
- :func:`load_preprocessed`: the memory-mapped Arrow folders written once by ``x2ctclip preprocess``
  (:mod:`x2ctclip.train.data.preprocess`): fixed-size int16 HU volumes and simulated 8-bit CXRs.
- :func:`load_embedding_cache`: the frozen CT and report latents written by ``x2ctclip cache-embeddings``
  (:mod:`x2ctclip.train.data.embedding_cache`).

CT-RATE layout (the release's real names, :data:`CT_RATE_TABLES`; recorded in
``tests/fixtures/ct_rate_release_layout.json``)::

    {root}/{split}_fixed/{split}_{patient}/{split}_{patient}_{scan}/{stem}.nii.gz   corrected release (HU headers)
    {root}/{split}/...                                                               first release (blank headers)
    {root}/radiology_text_reports/train_reports.csv | validation_reports.csv   VolumeName, Findings_EN, Impressions_EN
    {root}/multi_abnormality_labels/train_predicted_labels.csv | valid_predicted_labels.csv  VolumeName + 18 labels
    {root}/metadata/train_metadata.csv | validation_metadata.csv   VolumeName, RescaleSlope, RescaleIntercept,
                                                                  XYSpacing "[x, y]", ZSpacing, NumberofSlices, ...
    {root}/metadata/no_chest_train.txt | no_chest_valid.txt        volumes that are not chest CTs (left out)

``release="auto"`` reads ``{split}_fixed`` when present (:func:`resolve_release`).

Tables are joined on the volume name without its ``.nii.gz`` suffix (the released CSVs spell it with the suffix).

Header or metadata, decided from each file by the project's one NIfTI decoder
(:func:`x2ctclip.processors.volume_io.decode_nifti`): a header with an orientation (``qform_code`` or ``sform_code``
> 0; the corrected release) gives the affine and ``scl_slope`` / ``scl_inter`` (values already HU: the metadata
rescale is not applied again); a blank header (the first release) is read in CT-RATE's orientation with the metadata
spacing (``XYSpacing`` in-plane, ``ZSpacing`` between slices) and ``RescaleSlope`` / ``RescaleIntercept``. A
``ZSpacing`` that is NaN falls back to the in-plane spacing, as the X2CT-CLIP preprocessing did. Every volume is then
checked to be plausible HU (:func:`x2ctclip.processors.volume_io.check_hu`) with air near -1000 HU (:func:`check_air`).

"Experiment" batching (X2CT-CLIP's ``batch_style="experiment"``): a CT-RATE scan (``{split}_{patient}_{scan}``, an
"experiment") has one or more reconstructions of the same acquisition; each epoch uses one random reconstruction per
scan, so a batch never holds two reconstructions of one scan (they would be false negatives of each other in the
contrastive loss). :func:`one_recon_per_scan` and :class:`UniqueScanBatchSampler` do this for the map-style datasets;
``stream_ct_rate(..., one_recon_per_scan=True, epoch=e)`` for the stream.

May import: the library (``x2ctclip``, ``x2ctclip.processors``) and ``x2ctclip.train.progress``; every job package
of ``x2ctclip.train`` may import it.
"""

from ..compat import package_getattr as _package_getattr

# The names of the old module x2ctclip.train.data keep working for one release, with a DeprecationWarning.
__getattr__ = _package_getattr(__name__)
