"""The training loop both X2CT-CLIP trainers share, built on Hugging Face Accelerate.

A :class:`TrainingStage` says *what* is trained (model, rows, batches, evaluation, final folder); :class:`Trainer`
says *how*: one process or many (``accelerate launch`` / ``torchrun``, DDP), mixed precision, gradient
accumulation, clipping, logging on the main process (TensorBoard and CSV) with a tqdm bar, atomic resumable
checkpoints, and the final ``save_pretrained`` folder.

Data order. Each epoch the stage gives the ordered list of rows to train on (for example one random reconstruction
per scan, shuffled). The list is cut into *global* batches of ``per_device_batch_size x processes`` rows (the rest
is dropped, so every process has the same number of rows, as the gathered contrastive loss requires) and process
``r`` takes slice ``r`` of every global batch. Every row's randomness (augmentation) is seeded by
``(seed, epoch, position in the epoch)``. Hence

- a run with ``P`` processes sees exactly the global batches of a one-process run with ``P`` times the batch, and
  with the gathered "local" loss and DDP's gradient averaging its updates equal the one-process updates;
- the data position after ``s`` optimiser steps is a function of ``s`` alone, so resuming needs only the step
  number; model, optimiser, scheduler, gradient scaler and RNG states come from ``accelerator.save_state``.

Checkpoints are written to ``OUTPUT/.tmp-checkpoint-N`` and renamed to ``OUTPUT/checkpoint-N`` only when complete
(with ``trainer_state.json`` last), so a run killed at any moment leaves either a complete checkpoint or an ignored
temporary folder.

May import: the library, ``x2ctclip.train.data``, ``x2ctclip.train.evaluation`` (metrics while training) and
``x2ctclip.train.hub.folders`` (the model folder a run finishes).
"""
