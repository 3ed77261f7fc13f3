"""Fine-tune a (patched) encoder on IMDb with the Hugging Face Trainer, then measure it.

What a run directory holds is described in :mod:`qra.experiment.runs`; training writes its
``config.json`` before the first step and its ``metrics.json`` (accuracy, F1, speed, memory and the
attention measurements) at the end.  Re-evaluations (robustness, quantum settings) are the job of
:mod:`qra.experiment.evaluation`, run after training by whoever asked for them.

The Trainer runs unchanged under ``torchrun`` / ``accelerate launch``; only the main process
writes results.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import (
    DataCollatorWithPadding,
    PreTrainedModel,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)
from transformers.trainer_utils import get_last_checkpoint

from .. import patching
from . import distributed
from .attention_maps import attention_example, attention_statistics, attention_subset
from .config import TrainConfig
from .data import load_text_classification
from .metrics import classification_metrics
from .models import load_classifier, load_tokenizer, resolve_device, sdpa_without_cudnn
from .provenance import provenance
from .runs import RunDirectory

logger = logging.getLogger("qra")
DATALOADER_WORKERS = 2
#: set by a launcher that runs several trainings on one GPU at once (experiments/sweep.py --jobs-per-gpu);
#: recorded so that a report does not read their shared-GPU speeds as a single run's
SHARED_DEVICE_ENV = "QRA_RUNS_SHARING_DEVICE"


def build_model(config: TrainConfig) -> PreTrainedModel:
    """The pretrained classifier, patched with the configured feature map unless it is the baseline."""
    model = load_classifier(config.model)
    if not config.is_baseline:
        patching.patch(model, config.featuremap, layers=config.layers, mode=config.mode,
                       featuremap_params=config.featuremap_params, beta=config.beta,
                       learn_beta=config.learn_beta)  # fmt: skip
    return model


class JsonlLogCallback(TrainerCallback):
    """Append every Trainer log entry to ``train_log.jsonl`` as it happens (main process only)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            with self.path.open("a") as stream:
                stream.write(json.dumps({"step": state.global_step, "epoch": state.epoch, **logs}) + "\n")


class StepProfilerCallback(TrainerCallback):
    """Profile ``steps`` training steps after a warm-up of ``start`` steps; write ``profile.txt``.

    Where a step's time goes (host-side Python and data work vs GPU kernels) decides whether more
    GPUs can help: DDP divides the GPU work of a step, not its host overhead.  The table lists the
    operations by self CPU time and, on CUDA, by self device time, and the wall time per step.
    """

    def __init__(self, path: Path, steps: int, start: int = 10) -> None:
        self.path, self.steps, self.start = path, steps, start
        self.profiler: torch.profiler.profile | None = None
        self.began = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.start and self.profiler is None:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if torch.cuda.is_available():
                activities.append(torch.profiler.ProfilerActivity.CUDA)
                torch.cuda.synchronize()
            self.profiler = torch.profiler.profile(activities=activities)
            self.profiler.__enter__()
            self.began = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self.profiler is None or state.global_step != self.start + self.steps:
            return
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        wall = (time.perf_counter() - self.began) / self.steps
        self.profiler.__exit__(None, None, None)
        averages = self.profiler.key_averages()
        tables = [f"{self.steps} steps after {self.start}: {wall * 1000:.1f} ms per step (wall, synchronised)\n",
                  averages.table(sort_by="self_cpu_time_total", row_limit=40)]  # fmt: skip
        if torch.cuda.is_available():
            tables.append(averages.table(sort_by="self_device_time_total", row_limit=40))
        if state.is_world_process_zero:
            self.path.write_text("\n".join(tables))
        self.profiler = None


def _training_arguments(config: TrainConfig, run_dir: Path, device: torch.device) -> TrainingArguments:
    fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    sampling = (
        {"train_sampling_strategy": "group_by_length"} if "train_sampling_strategy" in fields
        else {"group_by_length": True}
    )  # fmt: skip
    return TrainingArguments(
        output_dir=str(RunDirectory(run_dir).checkpoints_dir),
        num_train_epochs=config.epochs,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.eval_batch_size,
        learning_rate=config.lr,
        weight_decay=config.weight_decay,
        seed=config.seed,
        data_seed=config.seed,
        bf16=device.type == "cuda",
        use_cpu=device.type == "cpu",
        eval_strategy="no",
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=1,
        logging_steps=max(1, min(50, config.save_steps)),
        report_to="none",
        # the default (True) tests every step's loss for NaN in Python, a GPU sync per step that keeps the
        # host from queuing the next step; a non-finite loss then shows in the logged loss instead
        logging_nan_inf_filter=False,
        # every trainable parameter gets a gradient (tested for each registered map), and the buffers
        # (the maps' draws) are identical on every rank and never change (checked after training): DDP
        # need not search the autograd graph for unused parameters nor broadcast buffers before each step
        ddp_find_unused_parameters=False,
        ddp_broadcast_buffers=False,
        # collating in worker processes overlaps it with the GPU's work; on the CPU it would compete
        dataloader_num_workers=DATALOADER_WORKERS if device.type == "cuda" else 0,
        **sampling,
    )


def _file_logging(run_dir: Path) -> logging.Handler:
    handler = logging.FileHandler(run_dir / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    for name in ("qra", "transformers"):
        logging.getLogger(name).addHandler(handler)
    logger.setLevel(logging.INFO)
    return handler


def train(config: TrainConfig, resume: bool = False) -> Path:
    """Run one experiment end to end; returns the run directory."""
    run = RunDirectory(Path(config.output_dir))
    run_dir = run.path
    if run.is_finished and not resume:
        raise FileExistsError(f"{run_dir} already holds a finished run (metrics.json); choose another --output-dir")
    last_checkpoint = get_last_checkpoint(str(run.checkpoints_dir)) if run.checkpoints_dir.is_dir() else None
    if last_checkpoint and not resume:
        raise FileExistsError(f"{run_dir} holds an unfinished run ({last_checkpoint}); continue it with --resume")
    device = resolve_device(config.device)
    run_dir.mkdir(parents=True, exist_ok=True)
    handler = _file_logging(run_dir) if distributed.is_main_process() else None
    try:
        with sdpa_without_cudnn():  # training, evaluation and the attention metrics alike
            return _train(config, run, device, last_checkpoint if resume else None)
    finally:
        if handler is not None:
            for name in ("qra", "transformers"):
                logging.getLogger(name).removeHandler(handler)
            handler.close()


def _train(config: TrainConfig, run: RunDirectory, device: torch.device, checkpoint: str | None) -> Path:
    run_dir = run.path
    set_seed(config.seed)
    tokenizer = load_tokenizer(config.model, config.max_length)
    model = build_model(config)  # before the data: a bad feature map or parameter fails fast
    data = load_text_classification(config.data_dir, config.max_train_samples, config.max_eval_samples, config.seed)
    tokenized = data.map(
        lambda batch: tokenizer(batch["text"], truncation=True, max_length=config.max_length),
        batched=True,
        remove_columns=["text"],
        desc="tokenizing",
    )
    args = _training_arguments(config, run_dir, device)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=tokenized["train"],
        eval_dataset=tokenized["test"],
        data_collator=DataCollatorWithPadding(tokenizer),
        processing_class=tokenizer,
        compute_metrics=_evaluation_metrics,
        callbacks=[JsonlLogCallback(run_dir / "train_log.jsonl")]
        + ([StepProfilerCallback(run_dir / "profile.txt", config.profile_steps)] if config.profile_steps else []),
    )
    # Seeded draws should agree everywhere; a rank that drew differently would train another model.
    if not distributed.identical_across_ranks(distributed.kernel_attention_state(model)):
        raise RuntimeError("the feature-map draws differ between ranks; check that every rank uses the same seed")
    main_process = trainer.is_world_process_zero()
    if main_process:
        run.write_record(_config_record(config, model, data, device, trainer))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(args.device)
    logger.info("training %s on %d reviews", config.featuremap, len(tokenized["train"]))
    train_output = trainer.train(resume_from_checkpoint=checkpoint)
    evaluation = trainer.evaluate()  # gathered over all ranks by the Trainer, each test review once
    trained = trainer.model
    peaks = distributed.peak_memory_per_device(args.device)
    replicas = {
        "world_size": distributed.world_size(),
        "featuremap_draws_identical": True,  # checked above, before training
        "final_weights_identical": distributed.identical_across_ranks(trained.state_dict()),
    }
    if main_process:
        trainer.save_model(str(run.model_dir))
        metrics = {
            "accuracy": evaluation["eval_accuracy"],
            "f1": evaluation["eval_f1"],
            "eval_loss": evaluation["eval_loss"],
            "peak_gpu_memory_bytes": max(peaks) if peaks else None,
            "peak_gpu_memory_bytes_per_device": peaks,
            "distributed": replicas,
            # a resumed run's Trainer divides all samples by the time of the last part: not a throughput
            "train_samples_per_second": None if checkpoint else train_output.metrics.get("train_samples_per_second"),
            "resumed_from_checkpoint": Path(checkpoint).name if checkpoint else None,
            "eval_samples_per_second": evaluation.get("eval_samples_per_second"),
            "train_loss": train_output.metrics.get("train_loss"),
            "train_samples": len(tokenized["train"]),
            "eval_samples": len(tokenized["test"]),
            "eval_predictions": int(evaluation["eval_predictions"]),  # gathered over ranks: each review once
        }
        metrics |= measure_attention(trained, tokenizer, data["test"]["text"], config, run_dir)
        run.write_metrics(metrics)
    return run_dir


def _evaluation_metrics(prediction: Any) -> dict[str, float]:
    """Accuracy and F1, and how many predictions they cover (under DDP: gathered, duplicates dropped)."""
    return classification_metrics(prediction.predictions, prediction.label_ids) | {
        "predictions": len(prediction.label_ids)
    }


def measure_attention(
    model: PreTrainedModel, tokenizer: Any, texts: list[str], config: TrainConfig, run_dir: Path
) -> dict[str, Any]:
    """Attention entropy and distance on a fixed, seeded subset of test reviews; one example map saved."""
    subset = attention_subset(texts, config.attention_samples, config.seed)
    statistics = attention_statistics(model, tokenizer, subset, config.max_length, batch_size=config.eval_batch_size)
    example = attention_example(model, tokenizer, texts[0])
    np.savez_compressed(run_dir / "attention_example.npz", maps=example["maps"], tokens=np.array(example["tokens"]))
    return statistics | {"attention_samples": len(subset)}


def _config_record(
    config: TrainConfig, model: PreTrainedModel, data: Any, device: torch.device, trainer: Trainer
) -> dict:
    args = trainer.args
    return {
        "config": config.as_dict(),
        "model": {
            "name": config.model,
            "architecture": type(model).__name__,
            "model_type": model.config.model_type,
            "layers": model.config.num_hidden_layers,
            "heads": model.config.num_attention_heads,
            "parameters": sum(p.numel() for p in model.parameters()),
            "qra": getattr(model.config, "qra", None),
        },
        "data": {
            "source": config.data_dir or "hub:imdb",
            "train_samples": len(data["train"]),
            "test_samples": len(data["test"]),
        },
        "training": {
            "world_size": args.world_size,
            "effective_batch_size": args.per_device_train_batch_size
            * args.world_size
            * args.gradient_accumulation_steps,
            "learning_rate": args.learning_rate,
            "bf16": args.bf16,
            "runs_sharing_device": int(os.environ.get(SHARED_DEVICE_ENV, "1")),
        },
        **provenance(device),
    }
