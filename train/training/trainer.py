"""The Accelerate trainer that drives a stage: checkpoints and exact resume, schedules, parameter groups, and
the model folder at the end."""

from __future__ import annotations

import inspect
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration, is_tensorboard_available, set_seed
from torch import nn
from torch.utils.data import DataLoader
from transformers import (
    get_constant_schedule_with_warmup,
    get_cosine_schedule_with_warmup,
    get_linear_schedule_with_warmup,
)

from x2ctclip.fileio import replace_dir, write_json_atomic
from x2ctclip.processors import X2CTCLIPImageProcessor, X2CTCLIPProcessor, X2CTCLIPVolumeProcessor
from x2ctclip.train.hub.folders import finish_model_folder, run_training_info
from x2ctclip.train.progress import progress_bar
from x2ctclip.train.training.config import TrainConfig
from x2ctclip.train.training.sampler import GlobalBatchSampler, KeyedDataset
from x2ctclip.train.training.stage import TrainerCallback, TrainingStage, TrainResult
from x2ctclip.train.training.trackers import csv_tracker

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
_TMP_PREFIX = ".tmp-"
TRAINER_STATE = "trainer_state.json"
_CHECKPOINT_RE = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")


# ----------------------------------------------------------------------------------------------------- helpers
def parameter_groups(module: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on matrices and kernels only (not on biases, norms, scales, the logit scale)."""
    decay, no_decay = [], []
    for _, param in module.named_parameters():
        if not param.requires_grad:
            continue
        (decay if param.ndim >= 2 else no_decay).append(param)
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    if not groups:
        raise ValueError("the model has no trainable parameter: check the freeze_* options.")
    return groups


def find_checkpoint(output_dir: str | os.PathLike, resume: str) -> Path | None:
    """Resolve ``resume``: ``'latest'`` -> newest complete ``checkpoint-N`` in ``output_dir`` (None if there is none);
    otherwise a checkpoint folder, which must exist and be complete."""
    if resume == "latest":
        root = Path(output_dir)
        if not root.is_dir():
            return None
        found = []
        for child in root.iterdir():
            match = _CHECKPOINT_RE.match(child.name)
            if match and (child / TRAINER_STATE).is_file():
                found.append((int(match.group(1)), child))
        return max(found)[1] if found else None
    path = Path(resume)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such checkpoint folder to resume from.")
    if not (path / TRAINER_STATE).is_file():
        raise ValueError(f"{path}: not a complete checkpoint (no {TRAINER_STATE}).")
    return path


def _build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, total_steps: int):
    if config.lr_scheduler == "constant":
        return get_constant_schedule_with_warmup(optimizer, config.warmup_steps)
    if config.lr_scheduler == "cosine":
        return get_cosine_schedule_with_warmup(optimizer, config.warmup_steps, total_steps)
    return get_linear_schedule_with_warmup(optimizer, config.warmup_steps, total_steps)


def _cpu_only() -> bool:
    """True without an accelerator. Accelerate must be told: on CPU it recognises a torchrun launch (and sets up
    gloo data parallelism) only in its ``cpu=True`` mode."""
    if os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true"):
        return True
    if torch.cuda.is_available():
        return False
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        return False
    mps = getattr(torch.backends, "mps", None)
    return not (mps is not None and mps.is_available())


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def _write_json(path: Path, obj: Any) -> None:
    # default=str: a config may hold paths; NaN stays allowed (a diverged run's loss is still recorded).
    write_json_atomic(path, obj, default=str, allow_nan=True)


# ----------------------------------------------------------------------------------------------------- trainer
class Trainer:
    """Runs a :class:`TrainingStage` under Accelerate. See the module docstring for the guarantees.

    Args:
        config: the run's :class:`~x2ctclip.train.training.config.TrainConfig` (or subclass).
        stage: what to train.
        callbacks: :class:`TrainerCallback` objects.
    """

    def __init__(self, config: TrainConfig, stage: TrainingStage, callbacks: Sequence[TrainerCallback] = ()):
        self.config = config
        self.stage = stage
        self.callbacks = list(callbacks)
        self.output_dir = Path(config.output_dir)
        self.accelerator = None
        self.model: nn.Module | None = None
        self.global_step = 0

    # ------------------------------------------------------------------ setup
    def _probe_unused_parameters(self, module: nn.Module, sampler_batch, dataset, device) -> list[str]:
        """Names of trainable parameters that get no gradient from one forward/backward on a real batch."""
        with torch.random.fork_rng(devices=[]):
            batch = _to_device(self.stage.collate(dataset.__getitems__(sampler_batch)), device)
            output = module(**batch, return_loss=True)
            output.loss.backward()
        unused = [n for n, p in module.named_parameters() if p.requires_grad and p.grad is None]
        module.zero_grad(set_to_none=True)
        return unused

    def _make_accelerator(self, find_unused: bool):
        """Accelerate does the gradient accumulation (``accumulate()``: no DDP sync and loss / N on the micro-steps
        before the last) and the logging (its TensorBoard tracker and :func:`csv_tracker`)."""
        trackers: list[Any] = []
        if "csv" in self.config.report_to:
            trackers.append(csv_tracker(self.output_dir))
        if "tensorboard" in self.config.report_to:
            if is_tensorboard_available():
                trackers.append("tensorboard")
            else:
                logger.warning("tensorboard is not installed: TensorBoard logging is off.")
        handlers = [DistributedDataParallelKwargs(find_unused_parameters=find_unused)]
        return Accelerator(
            mixed_precision=self.config.mixed_precision, kwargs_handlers=handlers, cpu=_cpu_only(),
            gradient_accumulation_steps=self.config.gradient_accumulation_steps, log_with=trackers or None,
            project_config=ProjectConfiguration(project_dir=str(self.output_dir), logging_dir=str(self.output_dir)),
        )

    def _check_precision(self) -> None:
        if self.config.mixed_precision == "fp16" and not torch.cuda.is_available():
            raise ValueError("mixed_precision fp16 needs a CUDA GPU; on CPU use bf16 or no.")

    def total_steps(self, sampler: GlobalBatchSampler) -> int:
        """Optimiser steps of the run: ``max_steps``, or ``num_epochs`` epochs of micro-steps / accumulation."""
        if self.config.max_steps > 0:
            return self.config.max_steps
        micro = sum(sampler.steps_in_epoch(e) for e in range(self.config.num_epochs))
        steps = micro // self.config.gradient_accumulation_steps
        if steps == 0:
            raise ValueError(
                f"{self.config.num_epochs} epoch(s) hold fewer than one optimiser step "
                f"({micro} micro-batches of {sampler.global_batch} rows, accumulation "
                f"{self.config.gradient_accumulation_steps}): lower the batch size or raise num_epochs."
            )
        return steps

    # ------------------------------------------------------------------ checkpoints
    def _save_checkpoint(self, step: int, state: dict[str, Any]) -> Path:
        acc = self.accelerator
        name = f"{CHECKPOINT_PREFIX}{step:07d}"
        final = self.output_dir / name
        # Every rank saves its part into this one folder, so its name is fixed (atomic_dir's would differ per rank).
        tmp = self.output_dir / f"{_TMP_PREFIX}{name}"
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        acc.save_state(str(tmp))
        acc.wait_for_everyone()
        if acc.is_main_process:
            _write_json(tmp / TRAINER_STATE, state)
            replace_dir(tmp, final)
            self._prune_checkpoints()
        acc.wait_for_everyone()
        return final

    def _prune_checkpoints(self) -> None:
        limit = self.config.save_total_limit
        if limit <= 0:
            return
        found = sorted(
            (int(m.group(1)), p) for p in self.output_dir.iterdir() if (m := _CHECKPOINT_RE.match(p.name))
        )
        for _, path in found[:-limit]:
            shutil.rmtree(path, ignore_errors=True)

    # ------------------------------------------------------------------ main loop
    def train(self) -> TrainResult:
        """Run the stage to ``total_steps`` (resuming when configured), save ``OUTPUT/model``; returns the result.

        Longer than 80 lines on purpose: the loop reads top to bottom as one optimiser step (micro-batches, step,
        log, evaluate, checkpoint) and its state (step, windows, timers) stays local; each part is a method below.
        """
        config = self.config
        self._check_precision()
        state = PartialState(cpu=_cpu_only())
        world, rank = state.num_processes, state.process_index
        if state.is_main_process:
            self._remove_leftovers()
        state.wait_for_everyone()

        self.stage.setup(config)
        set_seed(config.seed)
        model = self.stage.build_model()
        module = self.stage.train_module(model)
        module.train()
        dataset = KeyedDataset(self.stage.train_dataset())
        probe_sampler = GlobalBatchSampler(self.stage, config.per_device_batch_size, world, rank, 0, 1)
        total_steps = self.total_steps(probe_sampler)
        acc = self.accelerator = self._make_accelerator(self._find_unused(module, probe_sampler, dataset, state))
        module, optimizer, scheduler = self._optimizer(module, total_steps)
        self.model = model

        start_step, resumed_from, log_window = self._resume(world)

        accum = config.gradient_accumulation_steps
        loader = self._loader(dataset, world, rank, start_step * accum, total_steps * accum)
        self._start_trackers(start_step)

        def log(step: int, values: dict[str, float]) -> None:
            acc.log(values, step=step)  # NaN values too, as the CSV log wrote them before

        bar = progress_bar(total_steps, initial=start_step, desc=f"train {self.stage.name}", unit="step",
                           disable=not (acc.is_main_process and config.progress_bar))
        for cb in self.callbacks:
            cb.on_train_begin(self)

        unwrapped = acc.unwrap_model(module)
        step, micro, last_loss = start_step, 0, float("nan")
        step_sums: dict[str, torch.Tensor] = {}
        t_start = t_window = time.perf_counter()
        rows_per_step = config.per_device_batch_size * world * accum
        eval_metrics: dict[str, float] = {}
        for batch in loader:
            batch = _to_device(batch, acc.device)
            with acc.accumulate(module):  # backward divides the loss by accum; DDP syncs on the last micro-step only
                output = module(**batch, return_loss=True)
                acc.backward(output.loss)
            last_micro = acc.sync_gradients
            terms = {"loss": output.loss.detach(), **self.stage.loss_terms(output)}
            for key, value in terms.items():
                step_sums[key] = step_sums.get(key, 0.0) + value.float() / accum
            micro += 1
            if not last_micro:
                continue

            last_loss = self._optimizer_step(module, optimizer, scheduler, unwrapped, step_sums, log_window)
            step_sums = {}
            step += 1
            self.global_step = step

            logs: dict[str, float] = {}
            if step % config.logging_steps == 0 or step == total_steps:
                now = time.perf_counter()
                logs = self._window_logs(step, log_window, scheduler.get_last_lr()[0], unwrapped, rows_per_step,
                                         now - t_window)
                t_window = now
                log_window = {}
                if acc.is_main_process:
                    log(step, logs)
                    bar.set_postfix(loss=f"{logs['train/loss']:.4f}")
            bar.update(1)

            if config.eval_steps and step % config.eval_steps == 0 and step != total_steps:
                eval_metrics = self._evaluate(unwrapped, step, log)
            if config.save_steps and step % config.save_steps == 0 and step != total_steps:
                ckpt_state = {"step": step, "global_batch": rows_per_step, "num_processes": world,
                              "log_window": log_window, "config": config.to_dict()}  # fmt: skip
                path = self._save_checkpoint(step, ckpt_state)
                for cb in self.callbacks:
                    cb.on_save(self, step, path)
            for cb in self.callbacks:
                cb.on_step_end(self, step, logs)
        bar.close()

        eval_metrics = self._evaluate(unwrapped, step, log) if self.stage_has_eval() else eval_metrics
        runtime = time.perf_counter() - t_start
        result = TrainResult(
            global_step=step,
            epochs=self._epochs(step, rows_per_step),
            train_loss=last_loss,
            train_runtime_s=runtime,
            samples_seen=step * rows_per_step,
            eval_metrics=eval_metrics,
            resumed_from=resumed_from,
        )
        self._save_final(module, unwrapped, result)
        for cb in self.callbacks:
            cb.on_train_end(self, result)
        return result

    def _loader(self, dataset: KeyedDataset, world: int, rank: int, start_micro: int, end_micro: int) -> DataLoader:
        """This process's loader over micro-batches ``[start_micro, end_micro)`` of the global batch order."""
        config = self.config
        sampler = GlobalBatchSampler(self.stage, config.per_device_batch_size, world, rank, start_micro, end_micro)
        return DataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=self.stage.collate,
            num_workers=config.num_workers,
            # A private generator: the loader must not draw from the global RNG (that would shift dropout masks
            # depending on when iterators are created, e.g. after a resume).
            generator=torch.Generator().manual_seed(config.seed),
            persistent_workers=False,
        )

    def _start_trackers(self, start_step: int) -> None:
        acc = self.accelerator
        for tracker in acc.log_with:
            if hasattr(tracker, "start_step"):
                tracker.start_step = start_step
        # On resume both trackers drop what was logged after the checkpoint (TensorBoard: purge_step).
        acc.init_trackers("tensorboard", init_kwargs={"tensorboard": {"purge_step": start_step or None}})
        if acc.is_main_process:
            self.config.to_yaml(self.output_dir / "train_config.yaml")

    def _optimizer_step(self, module: nn.Module, optimizer, scheduler, unwrapped: nn.Module,
                        step_sums: dict[str, torch.Tensor], log_window: dict[str, float]) -> float:
        """Clip, step the optimiser and the schedule, then add the step's losses (mean over processes) and gradient
        norm to ``log_window`` (in place); returns the step's loss."""
        acc, config = self.accelerator, self.config
        grad_norm = None
        if config.max_grad_norm > 0:
            grad_norm = acc.clip_grad_norm_(module.parameters(), config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        self.stage.after_optimizer_step(unwrapped)
        # Mean over processes of this step's losses (one small all-reduce per step keeps the log exact).
        keys = sorted(step_sums)
        reduced = acc.reduce(torch.stack([torch.as_tensor(step_sums[k], device=acc.device) for k in keys]), "mean")
        step_values = dict(zip(keys, reduced.tolist()))
        for key, value in step_values.items():
            log_window[key] = log_window.get(key, 0.0) + value
        log_window["_n"] = log_window.get("_n", 0) + 1
        if grad_norm is not None:
            log_window["grad_norm"] = log_window.get("grad_norm", 0.0) + float(grad_norm)
        return step_values["loss"]

    def _find_unused(self, module: nn.Module, probe_sampler: GlobalBatchSampler, dataset: KeyedDataset,
                     state: PartialState) -> bool:
        """DDP's ``find_unused_parameters``: as configured, or (``auto``, several processes) whether one probe
        batch leaves a trainable parameter without a gradient."""
        config = self.config
        if config.find_unused_parameters != "auto" or state.num_processes <= 1:
            return config.find_unused_parameters == "true"
        module.to(state.device)
        unused = self._probe_unused_parameters(module, next(iter(probe_sampler)), dataset, state.device)
        if unused and state.is_main_process:
            logger.warning("find_unused_parameters on: %d trainable parameter(s) get no gradient, e.g. %s",
                           len(unused), unused[:5])
        return bool(unused)

    def _optimizer(self, module: nn.Module, total_steps: int):
        """AdamW and the learning-rate schedule; ``(prepared module, prepared optimizer, scheduler)``."""
        config, acc = self.config, self.accelerator
        optimizer = torch.optim.AdamW(
            parameter_groups(module, config.weight_decay),
            lr=config.learning_rate,
            betas=tuple(config.adam_betas),
            eps=config.adam_epsilon,
        )
        scheduler = _build_scheduler(optimizer, config, total_steps)
        module, optimizer = acc.prepare(module, optimizer)
        # The scheduler is stepped once per optimiser step by the loop (not prepared: Accelerate would step it once
        # per process), but it is registered so that save_state / load_state carry it.
        acc.register_for_checkpointing(scheduler)
        return module, optimizer, scheduler

    def _remove_leftovers(self) -> None:
        """Main process: delete what a run killed while writing a checkpoint or the final model left behind."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        for pattern in (f"{_TMP_PREFIX}{CHECKPOINT_PREFIX}*", f".{CHECKPOINT_PREFIX}*.old.*", ".model.old.*"):
            for child in self.output_dir.glob(pattern):  # temporary folders and replace_dir's old copies
                shutil.rmtree(child, ignore_errors=True)

    def _resume(self, world: int) -> tuple[int, str | None, dict[str, float]]:
        """Load ``config.resume``'s checkpoint into the prepared accelerator: ``(start step, its path or None, the
        unfinished logging window)``; ``(0, None, {})`` when there is nothing to resume."""
        config, acc = self.config, self.accelerator
        if not config.resume:
            return 0, None, {}
        checkpoint = find_checkpoint(self.output_dir, config.resume)
        if checkpoint is None:
            if acc.is_main_process:
                logger.warning("resume=latest: no checkpoint in %s, starting from scratch.", self.output_dir)
            return 0, None, {}
        saved = json.loads((checkpoint / TRAINER_STATE).read_text())
        global_batch = config.per_device_batch_size * world * config.gradient_accumulation_steps
        if saved["global_batch"] != global_batch:
            raise ValueError(
                f"{checkpoint}: saved with a global batch of {saved['global_batch']} rows, this run has "
                f"{global_batch} (per_device_batch_size x processes x gradient_accumulation_steps); "
                "resume with the same layout."
            )
        acc.load_state(str(checkpoint))
        return int(saved["step"]), str(checkpoint), saved.get("log_window", {})

    def _epochs(self, step: int, rows_per_step: int) -> float:
        """Epochs done after ``step`` optimiser steps (rows seen over the rows of one epoch)."""
        return step * rows_per_step / max(len(self.stage.epoch_indices(0)), 1)

    def _window_logs(self, step: int, window: dict[str, float], learning_rate: float, unwrapped: nn.Module,
                     rows_per_step: int, window_seconds: float) -> dict[str, float]:
        """The ``train/*`` values logged at ``step``: the means over the steps of ``window`` (it holds sums and
        their count ``_n``), the learning rate, epoch, logit scale and throughput in rows/s."""
        n = window.pop("_n")
        logs = {f"train/{k}": v / n for k, v in window.items()}
        logs["train/learning_rate"] = learning_rate
        logs["train/epoch"] = self._epochs(step, rows_per_step)
        logit_scale = getattr(unwrapped, "logit_scale", None)
        if logit_scale is None and hasattr(unwrapped, "model"):
            logit_scale = getattr(unwrapped.model, "logit_scale", None)
        if logit_scale is not None:
            logs["train/logit_scale"] = float(logit_scale.detach().exp())
        logs["train/rows_per_second"] = n * rows_per_step / max(window_seconds, 1e-9)
        return logs

    def _save_final(self, module: nn.Module, unwrapped: nn.Module, result: TrainResult) -> None:
        """Write ``OUTPUT/model`` (swapped in whole) and ``train_result.json``; close the trackers."""
        acc = self.accelerator
        acc.wait_for_everyone()
        # Every process takes part in gathering the state (sharded strategies need it); the main one writes it.
        state_dict = self._model_state_dict(module, unwrapped)
        if acc.is_main_process:
            final = self.output_dir / "model"
            tmp = self.output_dir / f"{_TMP_PREFIX}model"  # one name for every rank, as for checkpoints
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            unwrapped.eval()
            self.stage.save_final(self.stage_model(unwrapped), tmp, result, state_dict)
            replace_dir(tmp, final)
            result.model_dir = str(final)
            _write_json(self.output_dir / "train_result.json", result.to_dict())
            for tracker in acc.trackers:  # not acc.end_training(): that also ends the process group
                tracker.finish()
        acc.wait_for_everyone()

    def _model_state_dict(self, module: nn.Module, unwrapped: nn.Module) -> dict[str, torch.Tensor]:
        """The stage model's state dict, gathered through Accelerate; keys relative to the model when the trained
        module is a wrapper around it."""
        state = self.accelerator.get_state_dict(module)
        model = self.stage_model(unwrapped)
        prefix = next((f"{name}." for name, sub in unwrapped.named_modules() if sub is model and name), "")
        if prefix:
            state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        return state

    def stage_has_eval(self) -> bool:
        return type(self.stage).evaluate is not TrainingStage.evaluate

    def stage_model(self, unwrapped: nn.Module) -> nn.Module:
        """The model to save: the stage's model (the train module may be a wrapper around it)."""
        return self.model if self.model is not None else unwrapped

    def _evaluate(self, unwrapped: nn.Module, step: int, log) -> dict[str, float]:
        acc = self.accelerator
        metrics: dict[str, float] = {}
        if acc.is_main_process:
            was_training = unwrapped.training
            unwrapped.eval()
            with torch.no_grad(), torch.random.fork_rng(devices=[]):
                metrics = self.stage.evaluate(self.stage_model(unwrapped), acc.device)
            unwrapped.train(was_training)
            if metrics:
                log(step, {f"eval/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))})
        acc.wait_for_everyone()
        return metrics


# ----------------------------------------------------------------------------------------------------- final folder
def build_processor(
    tokenizer: Any,
    image_size: int = 224,
    image_mean: float = 0.5,
    image_std: float = 0.5,
    volume_processor_kwargs: dict[str, Any] | None = None,
    max_length: int = 512,
):
    """The ``X2CTCLIPProcessor`` saved with a trained model: CXR processor at ``image_size`` (Resize + CenterCrop, the
    evaluation transform), CT volume processor with the preprocessing parameters of the training data, tokenizer."""
    image = X2CTCLIPImageProcessor(size=image_size, crop_size=image_size, image_mean=image_mean, image_std=image_std)
    volume = X2CTCLIPVolumeProcessor(**(volume_processor_kwargs or {}))
    return X2CTCLIPProcessor(image_processor=image, volume_image_processor=volume, tokenizer=tokenizer,
                             max_length=max_length)


def volume_processor_kwargs(data_dir: str | os.PathLike) -> dict[str, Any]:
    """The volume-processor parameters recorded in ``data_dir/preprocess_config.json`` ({} when absent)."""
    path = Path(data_dir) / "preprocess_config.json"
    if not path.is_file():
        return {}
    values = json.loads(path.read_text())
    params = values.get("volume_processor") or {}
    # Keep only the constructor arguments (the recorded dict may carry class names and versions).
    accepted = set(inspect.signature(X2CTCLIPVolumeProcessor.__init__).parameters) - {"self", "kwargs"}
    return {k: v for k, v in params.items() if k in accepted}


def write_model_card(folder: Path, title: str, summary: str, config: TrainConfig, result: TrainResult,
                     extra: str = "") -> None:
    """The final folder's ``README.md``: built by the package's one card builder (``x2ctclip.train.hub.cards``), with the
    run's measured facts (steps, runtime, final loss, last validation metrics) and its options, then validated as a
    Hub folder (``auto_map``, remote code, processor, tokenizer, no local path). ``folder`` may be a temporary name:
    the card names the final folder (``model``)."""
    info = run_training_info(title, summary, config.to_dict(), result.to_dict(), extra)
    # The weights a stage starts from: the CT-CLIP teacher (x2ct) or the pretrained report tower (ctclip). A Hub id
    # goes on the card as base_model; a local folder passes on its own card's base models and data sets.
    built_on = [getattr(config, name, None) for name in ("ctclip_model", "text_model", "cxr_model", "init_model")]
    # A teacher folder without a tokenizer (a conversion without --tokenizer) gives a folder without one; said on exit.
    teacher = getattr(config, "ctclip_model", None)
    teacher_dir = Path(teacher) if teacher else None
    require_tokenizer = not (teacher_dir and teacher_dir.is_dir()
                             and not (teacher_dir / "tokenizer_config.json").is_file())
    name = f"x2ctclip-{Path(config.output_dir).name}" if getattr(config, "output_dir", None) else None
    finish_model_folder(folder, model_id="model", model_name=name, training_info=info,
                        built_on=[b for b in built_on if b], require_tokenizer=require_tokenizer)
