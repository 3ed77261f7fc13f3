"""Fine-tune a (patched) encoder on IMDb with the Hugging Face Trainer, then measure it.

What a run directory holds is described in :mod:`qra.experiment.runs`; training writes its
``config.json`` before the first step and its ``metrics.json`` (accuracy, F1, speed, memory and the
attention measurements) at the end.  Re-evaluations (robustness, quantum settings) are the job of
:mod:`qra.experiment.evaluation`, run after training by whoever asked for them.

The Trainer runs unchanged under ``torchrun`` / ``accelerate launch``; only the main process
writes results.

What can go wrong is handled so that nothing is lost and nothing is silent: ``--resume`` refuses other
settings than the run's and leaves a finished run as it is; a non-finite loss (checked on the losses the
Trainer logs, every ``logging_steps``, and at the end: no per-step GPU sync), non-finite logits or
attention stop the run and record ``failed.json``; SIGTERM/SIGINT save a checkpoint before stopping;
a full disk gives a clear error, and incomplete checkpoints are set aside so that a rerun can go on.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import math
import os
import signal
import threading
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
from transformers.trainer_pt_utils import LengthGroupedSampler

from .. import patching
from . import distributed
from .attention_maps import attention_example, attention_statistics, attention_subset
from .config import TrainConfig
from .data import load_text_classification
from .metrics import NonFiniteError, classification_metrics
from .models import freeze, load_classifier, load_tokenizer, resolve_device, sdpa_without_cudnn
from .provenance import provenance
from .robustness import needs_wordnet, require_wordnet
from .runs import RunDirectory

logger = logging.getLogger("qra")
DATALOADER_WORKERS = 2
#: set by a launcher that runs several trainings on one GPU at once (experiments/sweep.py --jobs-per-gpu);
#: recorded so that a report does not read their shared-GPU speeds as a single run's
SHARED_DEVICE_ENV = "QRA_RUNS_SHARING_DEVICE"


class TrainingInterrupted(RuntimeError):
    """Training stopped on SIGTERM/SIGINT after saving a checkpoint; ``--resume`` continues it."""

    def __init__(self, signum: int, step: int, checkpoint: Path | None) -> None:
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        saved = f"checkpoint saved in {checkpoint}" if checkpoint else "no checkpoint could be saved"
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}: {saved}; "
                         "run the same command with --resume to continue")  # fmt: skip


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from (corrupted or unreadable)."""


class DiskFullError(OSError):
    """No space left while training wrote a checkpoint, the model or a result."""


def build_model(config: TrainConfig) -> PreTrainedModel:
    """The pretrained classifier (with the configured stock attention), patched with the configured feature map
    unless it is the baseline, with the ``--freeze`` parts frozen (kernel attention's parameters stay trainable).

    With ``--calibrate-angle-scale`` the circuit map keeps its angle scale as a parameter
    (``learn_angle_scale``), so that each layer's calibrated scale is saved with the model.
    """
    model = load_classifier(config.model, attn_implementation=config.attn_implementation)
    if not config.is_baseline:
        params = dict(config.featuremap_params)
        if config.calibrate_angle_scale != "off":
            params["learn_angle_scale"] = True
        patching.patch(model, config.featuremap, layers=config.layers, mode=config.mode,
                       featuremap_params=params, beta=config.beta, learn_beta=config.learn_beta,
                       implementation=config.kernel_implementation)  # fmt: skip
    if config.freeze:
        freeze(model, config.freeze)
    return model


class SeededLengthGroupedSampler(LengthGroupedSampler):
    """The Trainer's length-grouped order, drawn from a generator seeded by (seed, epoch) only.

    The Trainer's own sampler draws from the global RNG, whose state depends on everything the run did
    before (a feature map's initialisation, dropout calls of earlier epochs), so two arms with the same seed
    can see different orders.  This one gives every arm with a seed the same order in every epoch (the
    Trainer calls :meth:`set_epoch`), and a resumed run the order it would have had.
    """

    def __init__(self, batch_size: int, lengths: list[int], seed: int) -> None:
        super().__init__(batch_size, lengths=lengths, generator=torch.Generator())
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):
        self.generator.manual_seed(self.seed * 1_000_003 + self.epoch)
        return super().__iter__()


class PairedOrderTrainer(Trainer):
    """A Trainer whose training order depends only on the seed (``--data-order seed``)."""

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        lengths = [len(ids) for ids in dataset["input_ids"]]
        return SeededLengthGroupedSampler(self.args.train_batch_size * self.args.gradient_accumulation_steps,
                                          lengths, self.args.data_seed)  # fmt: skip


class JsonlLogCallback(TrainerCallback):
    """Append every Trainer log entry to ``train_log.jsonl`` as it happens (main process only)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            with self.path.open("a") as stream:
                stream.write(json.dumps({"step": state.global_step, "epoch": state.epoch, **logs}) + "\n")


def logged_mean_loss(log_path: Path) -> float | None:
    """The whole run's mean training loss, from the losses ``train_log.jsonl`` logged every ``logging_steps``.

    A resumed Trainer's ``train_loss`` averages only the steps of its own part (transformers 5 divides the
    part's loss by the part's steps: 0.0 when the resume had no step left), so a resumed run takes its mean
    from the log instead: each logged loss (the mean since the previous log) weighted by the steps since the
    previous logged step.  Steps that a part re-ran after its checkpoint were logged twice; the later entry
    counts.  None when the log holds no loss.
    """
    losses: dict[int, float] = {}
    if log_path.is_file():
        for line in log_path.read_text().splitlines():
            entry = json.loads(line)
            if isinstance(entry.get("loss"), (int, float)):
                losses[int(entry["step"])] = float(entry["loss"])
    total = steps = previous = 0
    for step in sorted(losses):
        total += losses[step] * (step - previous)
        steps += step - previous
        previous = step
    return total / steps if steps else None


class NonFiniteLossCallback(TrainerCallback):
    """Stop with :class:`NonFiniteError` when a logged training loss is NaN or infinite.

    The Trainer logs the mean loss since its last log every ``logging_steps`` (and the run's mean at the
    end), so a NaN anywhere in between shows there, without a GPU sync per step.
    """

    KEYS = ("loss", "train_loss")

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key in self.KEYS:
            value = (logs or {}).get(key)
            if isinstance(value, (int, float)) and not math.isfinite(value):
                raise NonFiniteError(f"the training loss became {value} by step {state.global_step} (logged {key!r}); "
                                     "lower --lr, check the feature map's parameters, or try another seed")  # fmt: skip


class SaveOnSignalCallback(TrainerCallback):
    """On SIGTERM or SIGINT, finish the current step, save a checkpoint and stop training.

    A second signal stops at once (the signal's usual effect).  Under several processes the ranks agree
    on stopping at the logging steps (a tiny all-reduce there), so that they all save the same step.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.received: int | None = None
        self.previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self.previous[signum] = signal.signal(signum, self._handle)

    def restore(self) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        self.previous = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None:  # asked twice: stop now
            self.restore()
            signal.raise_signal(signum)
            return
        self.received = signum
        logger.warning("%s received: saving a checkpoint after this step, then stopping", signal.Signals(signum).name)

    def _stop_everywhere(self, args: TrainingArguments, state: Any) -> bool:
        if distributed.world_size() == 1:
            return self.received is not None
        if state.global_step % max(1, args.logging_steps):
            return False
        import torch.distributed as dist

        flag = torch.tensor([1.0 if self.received is not None else 0.0], device=args.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def on_step_end(self, args, state, control, **kwargs):
        if self._stop_everywhere(args, state):
            self.received = self.received or signal.SIGTERM
            control.should_save = True
            control.should_training_stop = True


class StepStartedCallback(TrainerCallback):
    """Notes whether a training step began (an error before it, when resuming, is the checkpoint's)."""

    def __init__(self) -> None:
        self.started = False

    def on_step_begin(self, args, state, control, **kwargs):
        self.started = True


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
        warmup_steps=config.warmup_ratio,  # transformers 5: a value in [0, 1) is a share of the training steps
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


def check_resumable(run: RunDirectory, config: TrainConfig) -> None:
    """Refuse to resume ``run`` with settings that would train another model than the one on record."""
    if not run.has_record:
        return
    differing = run.differing_settings(config)
    if differing:
        details = "; ".join(f"{key}: recorded {old!r}, now {new!r}" for key, (old, new) in differing.items())
        raise ValueError(
            f"cannot resume {run.path} with other settings than it was trained with ({details}). Resume with the "
            f"recorded settings (its config.json), or train the new settings into another --output-dir"
        )


def train(config: TrainConfig, resume: bool = False) -> Path:
    """Run one experiment end to end; returns the run directory.

    ``resume``: continue an interrupted run from its last complete checkpoint (its settings must be the
    recorded ones, except :data:`~qra.experiment.runs.RESUME_FREE_SETTINGS`); a finished run is left as it is.
    """
    run = RunDirectory(Path(config.output_dir))
    run_dir = run.path
    if resume:
        check_resumable(run, config)
    if needs_wordnet(config.robustness):
        require_wordnet()  # before hours of training, not after
    if run.is_finished and not run.is_failed:
        if not resume:
            raise FileExistsError(f"{run_dir} already holds a finished run (metrics.json); choose another --output-dir")
        logger.info("%s has finished training: nothing to resume", run_dir)
        return run_dir
    last_checkpoint = run.last_checkpoint()
    if last_checkpoint and not resume:
        raise FileExistsError(f"{run_dir} holds an unfinished run ({last_checkpoint}); continue it with --resume")
    device = resolve_device(config.device)
    run_dir.mkdir(parents=True, exist_ok=True)
    handler = _file_logging(run_dir) if distributed.is_main_process() else None
    try:
        if distributed.is_main_process():
            for path in run.remove_incomplete_checkpoints():  # never completely written: nothing resumes from them
                logger.warning("removed the incomplete checkpoint %s", path)
            run.clear_failure()
        if resume and last_checkpoint is None:
            logger.warning("%s has no complete checkpoint to resume from: training starts from the beginning", run_dir)
        with sdpa_without_cudnn():  # training, evaluation and the attention metrics alike
            return _train(config, run, device, str(last_checkpoint) if resume and last_checkpoint else None)
    except Exception as error:
        if _is_disk_full(error):
            raise DiskFullError(
                errno.ENOSPC,
                f"no space left on the device while writing into {run_dir} ({type(error).__name__}: {error}). Free "
                "some space, then run the same command with --resume: it continues from the last complete checkpoint "
                "(incomplete ones are removed), or starts from the beginning if there is none",
            ) from error
        raise
    finally:
        distributed.release()  # the last collective is behind every rank; see release() for why
        if handler is not None:
            for name in ("qra", "transformers"):
                logging.getLogger(name).removeHandler(handler)
            handler.close()


def _is_disk_full(error: BaseException) -> bool:
    """An error, or one it was raised from, that says the disk (or the user's quota) is full."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(seen)
        if "No space left on device" in text or "StorageFull" in text or "os error 28" in text:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _train(config: TrainConfig, run: RunDirectory, device: torch.device, checkpoint: str | None) -> Path:
    stop_on_signal = SaveOnSignalCallback()
    try:
        return _train_measure(config, run, device, checkpoint, stop_on_signal)
    except NonFiniteError as error:
        if distributed.is_main_process():
            run.write_failure(str(error), kind="non-finite")
        raise
    finally:
        stop_on_signal.restore()


def _train_measure(config: TrainConfig, run: RunDirectory, device: torch.device, checkpoint: str | None,
                   stop_on_signal: SaveOnSignalCallback) -> Path:  # fmt: skip
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
    started = StepStartedCallback()
    if checkpoint:  # the checkpoint holds the warm-ups' results; which parameters train is the config's
        prepared = run.preparation()
        restore_preparation(model, config)
    else:
        prepared = prepare_kernels(model, tokenizer, data["train"]["text"], config, device)
    trainer = (PairedOrderTrainer if config.data_order == "seed" else Trainer)(
        model=model,
        args=args,
        train_dataset=tokenized["train"],
        eval_dataset=tokenized["test"],
        data_collator=DataCollatorWithPadding(tokenizer),
        processing_class=tokenizer,
        compute_metrics=_evaluation_metrics,
        callbacks=[JsonlLogCallback(run_dir / "train_log.jsonl"), NonFiniteLossCallback(), stop_on_signal, started]
        + ([StepProfilerCallback(run_dir / "profile.txt", config.profile_steps)] if config.profile_steps else []),
    )
    # Seeded draws should agree everywhere; a rank that drew differently would train another model.
    if not distributed.identical_across_ranks(distributed.kernel_attention_state(model)):
        raise RuntimeError("the feature-map draws differ between ranks; check that every rank uses the same seed")
    main_process = trainer.is_world_process_zero()
    if main_process:
        run.write_record(_config_record(config, model, data, device, trainer))
        if prepared and not checkpoint:
            run.write_preparation(prepared)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(args.device)
    logger.info("training %s on %d reviews", config.featuremap, len(tokenized["train"]))
    stop_on_signal.install()
    try:
        train_output = trainer.train(resume_from_checkpoint=checkpoint)
    except (NonFiniteError, KeyboardInterrupt):
        raise
    except Exception as error:
        if checkpoint and not started.started and not _is_disk_full(error):
            raise CheckpointError(
                f"cannot resume from {checkpoint}: it is corrupted or unreadable ({type(error).__name__}: {error}). "
                f"Delete that folder to resume from an earlier checkpoint, or delete {run.checkpoints_dir} and run "
                "the same command without --resume to start over"
            ) from error
        raise
    finally:
        stop_on_signal.restore()
    if stop_on_signal.received is not None:
        raise TrainingInterrupted(stop_on_signal.received, trainer.state.global_step, run.last_checkpoint())
    if not math.isfinite(train_output.training_loss):
        raise NonFiniteError(f"the training loss is {train_output.training_loss} at the end of training")
    attention_paths = kernel_attention_paths(trainer.model)  # what the training steps ran on
    # gathered over all ranks by the Trainer, each test review once, in the test set's order
    prediction = trainer.predict(tokenized["test"], metric_key_prefix="eval")
    evaluation = prediction.metrics
    trainer.log(evaluation)  # predict(), unlike evaluate(), does not log its metrics: the training log keeps them
    if not math.isfinite(evaluation["eval_loss"]):
        raise NonFiniteError(f"the evaluation loss is {evaluation['eval_loss']}")
    trained = trainer.model
    peaks = distributed.peak_memory_per_device(args.device)
    replicas = {
        "world_size": distributed.world_size(),
        "featuremap_draws_identical": True,  # checked above, before training
        "final_weights_identical": distributed.identical_across_ranks(trained.state_dict()),
    }
    if main_process:
        trainer.save_model(str(run.model_dir))
        logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        run.write_predictions(logits, prediction.label_ids, data["test"]["text"])
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
            "train_loss": logged_mean_loss(run_dir / "train_log.jsonl") if checkpoint
            else train_output.metrics.get("train_loss"),
            "train_samples": len(tokenized["train"]),
            "eval_samples": len(tokenized["test"]),
            "eval_predictions": int(evaluation["eval_predictions"]),  # gathered over ranks: each review once
            "attention_paths": attention_paths,
            **prepared,
        }
        metrics |= measure_attention(trained, tokenizer, data["test"]["text"], config, run_dir)
        run.write_metrics(metrics)
        if not config.keep_checkpoints:  # the model is in model/; a checkpoint adds the optimizer state (2-3x)
            run.remove_checkpoints()
    return run_dir


#: training batches the warm-ups (distillation, angle-scale calibration) draw from
PREPARATION_BATCHES = 8


def prepare_kernels(model: PreTrainedModel, tokenizer: Any, texts: list[str], config: TrainConfig,
                    device: torch.device) -> dict[str, Any]:  # fmt: skip
    """Before fine-tuning: calibrate circuit maps' angle scales, then softmax temperatures, then distil the maps,
    as the config asks.

    They use a few seeded training batches; what they did goes into ``preparation.json`` and ``metrics.json``.
    A resumed run skips them: its checkpoint holds their result, ``preparation.json`` their record.
    """
    if config.calibrate_angle_scale == "off" and config.calibrate_temperature == "off" and not config.distill_steps:
        return {}
    from .angle_scale import calibrate_angle_scale
    from .distillation import distill_hedgehog, training_batches
    from .temperature import calibrate_temperature

    model.to(device)
    batches = training_batches(tokenizer, texts, PREPARATION_BATCHES, config.batch_size, config.max_length,
                               config.seed, device)  # fmt: skip
    done: dict[str, Any] = {}
    if config.calibrate_angle_scale != "off":
        done["angle_scale_calibration"] = calibrate_angle_scale(
            model, batches[:4], learn=config.calibrate_angle_scale == "learned", seed=config.seed
        )
        logger.info("angle scales calibrated: %s", done["angle_scale_calibration"]["layers"])
    if config.calibrate_temperature != "off":  # after the angle scale: the scores it sharpens depend on it
        done["temperature_calibration"] = calibrate_temperature(
            model, batches[:4], learn=config.calibrate_temperature == "learned"
        )
        logger.info("temperatures calibrated: %s", done["temperature_calibration"]["layers"])
    if config.distill_steps:
        done["distillation"] = distill_hedgehog(model, batches, config.distill_steps)
        logger.info("attention distillation: %s", done["distillation"])
    return done


def restore_preparation(model: PreTrainedModel, config: TrainConfig) -> None:
    """For a run resumed from a checkpoint: freeze again what the warm-ups froze.

    A checkpoint restores the calibrated angle scales' values, not whether they train; a scale calibrated
    ``fixed`` must stay out of the optimizer, or the checkpoint's optimizer state does not fit it.
    """
    if config.calibrate_angle_scale != "off":
        from .angle_scale import set_angle_scales_trainable

        set_angle_scales_trainable(model, config.calibrate_angle_scale == "learned")


def _evaluation_metrics(prediction: Any) -> dict[str, float]:
    """Accuracy and F1, and how many predictions they cover (under DDP: gathered, duplicates dropped)."""
    return classification_metrics(prediction.predictions, prediction.label_ids) | {
        "predictions": len(prediction.label_ids)
    }


def kernel_attention_paths(model: PreTrainedModel) -> dict[str, str] | None:
    """Each patched layer's attention path in its last forward pass (``fused`` or ``pytorch``); None unpatched."""
    modules = patching.attention_modules(model) if patching.is_patched(model) else []
    found = {index: getattr(module, patching.KERNEL_ATTENTION_ATTRIBUTE, None) for index, module in enumerate(modules)}
    paths = {str(index): kernel.last_path for index, kernel in found.items() if kernel is not None}
    return paths or None


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
            "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "attn_implementation": config.attn_implementation,
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
