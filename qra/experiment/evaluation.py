"""Evaluate a finished run again: robustness to perturbed test texts, and sampled or noisy quantum kernels.

Each result is merged into the run's ``metrics.json`` as soon as it is measured, and settings
already on record are not measured again, so an interrupted evaluation resumes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import AutoModelForSequenceClassification, PreTrainedModel, PreTrainedTokenizerBase

from ..attention import KernelAttention
from ..featuremaps.circuit import CircuitFeatureMap
from ..patching import load_patched, saved_patch_settings
from .config import TrainConfig
from .data import load_text_classification
from .metrics import classification_metrics
from .models import load_tokenizer, resolve_device, sdpa_without_cudnn
from .robustness import SynonymSource, perturb
from .runs import RunDirectory

EXAMPLES_PER_SETTING = 3


def load_run_model(run_dir: Path) -> PreTrainedModel:
    """The trained model of a run directory, patched as it was trained."""
    model_dir = RunDirectory(run_dir).model_dir
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{run_dir} has no trained model (model/config.json); did the run finish?")
    if saved_patch_settings(model_dir) is not None:
        return load_patched(model_dir)
    # the attention implementation the run trained with (an eager baseline is evaluated eager)
    implementation = RunDirectory(run_dir).config().attn_implementation
    return AutoModelForSequenceClassification.from_pretrained(model_dir, attn_implementation=implementation)


@dataclass
class FinishedRun:
    """A trained run, loaded back for evaluation on the test reviews its config names."""

    path: Path
    config: TrainConfig
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    texts: list[str]
    labels: np.ndarray

    def scores(self, texts: Sequence[str] | None = None, batch_size: int | None = None) -> dict[str, float]:
        """Accuracy and F1 on ``texts`` (default: the clean test reviews), labels from the test set."""
        logits = predict(self.model, self.tokenizer, self.texts if texts is None else texts,
                         self.config.max_length, batch_size or self.config.eval_batch_size)  # fmt: skip
        return classification_metrics(logits, self.labels)

    def recorded(self, key: str, default: Any) -> Any:
        """What the run's metrics.json holds under ``key`` (``default`` if nothing): what need not be measured again."""
        return RunDirectory(self.path).metrics().get(key, default)

    def record(self, key: str, value: Any, merge: bool = False) -> None:
        """Write ``value`` into the run's metrics.json under ``key`` (atomically); ``merge`` keeps other entries."""
        RunDirectory(self.path).update_metrics(key, value, merge)


def load_finished_run(run_dir: str | Path, device: str | None = None) -> FinishedRun:
    """The run's model (patched as trained) on ``device`` (default: the run's), tokenizer and test set.

    The test set, seed and length come from the run's own config, so evaluations match training's.
    """
    run_dir = Path(run_dir)
    config = RunDirectory(run_dir).config()
    model = load_run_model(run_dir).to(resolve_device(device or config.device))
    tokenizer = load_tokenizer(str(RunDirectory(run_dir).model_dir), config.max_length)
    test = load_text_classification(config.data_dir, 1, config.max_eval_samples, config.seed)["test"]
    return FinishedRun(run_dir, config, model, tokenizer, list(test["text"]), np.asarray(test["label"]))


@torch.inference_mode()
def predict(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int, batch_size: int
) -> np.ndarray:
    """Logits for ``texts``, in batches sorted by length (less padding), returned in input order."""
    device = next(model.parameters()).device
    model.eval()
    order = np.argsort([len(text) for text in texts])
    logits = np.zeros((len(texts), model.config.num_labels), dtype=np.float32)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    for start in tqdm(range(0, len(texts), batch_size), desc="evaluating", leave=False, mininterval=10):
        index = order[start : start + batch_size]
        batch = tokenizer([texts[i] for i in index], truncation=True, max_length=max_length, padding=True,
                          return_tensors="pt").to(device)  # fmt: skip
        with autocast, sdpa_without_cudnn():
            logits[index] = model(**batch).logits.float().cpu().numpy()
    return logits


def evaluate_robustness(
    run_dir: str | Path,
    settings: dict[str, list[float]],
    device: str | None = None,
    synonyms: SynonymSource | None = None,
) -> dict[str, Any]:
    """Accuracy/F1 on perturbed test texts for each (perturbation, rate); merged into ``metrics.json``.

    Every run perturbs the same reviews the same way (seeded by the run's seed).  Each setting is
    recorded as soon as it is measured and settings already on record are not measured again, so
    an interrupted evaluation resumes.
    """
    run = load_finished_run(run_dir, device)
    earlier = run.recorded("robustness", {})
    texts = run.texts
    clean = earlier.get("clean") or run.scores()
    results: dict[str, Any] = {"clean": clean}
    run.record("robustness", results, merge=True)
    for kind, rates in settings.items():
        for rate in rates:
            key = f"{kind}={rate:g}"
            if key in earlier:
                results[key] = earlier[key]
                continue
            perturbed = perturb(texts, kind, rate, seed=run.config.seed, synonyms=synonyms)
            scores = run.scores(perturbed)
            changed = [i for i, (a, b) in enumerate(zip(texts, perturbed, strict=True)) if a != b]
            results[key] = scores | {
                "kind": kind,
                "rate": rate,
                "accuracy_drop": clean["accuracy"] - scores["accuracy"],
                "f1_drop": clean["f1"] - scores["f1"],
                "examples": [
                    {"original": texts[i][:300], "perturbed": perturbed[i][:300]}
                    for i in changed[:EXAMPLES_PER_SETTING]
                ],
            }
            run.record("robustness", {key: results[key]}, merge=True)
    return results


#: Readout noise gives every key a 2^q × 2^q operator (B·H·N·4^q numbers per layer): batches stay this small
READOUT_EVAL_BATCH = 16
#: what a quantum evaluation setting varies, one at a time from the exact, noiseless kernel
QUANTUM_KNOBS = ("shots", "depolarizing", "readout")


def quantum_setting_key(setting: dict[str, Any]) -> tuple:
    """The setting's (shots, depolarizing, readout): how results on record are matched to requests."""
    return tuple(setting[knob] for knob in QUANTUM_KNOBS)


def is_exact(setting: dict[str, Any]) -> bool:
    """The exact, noiseless kernel: the reference every other setting is compared with."""
    return not any(setting[knob] for knob in QUANTUM_KNOBS)


def quantum_settings(
    shots: Sequence[int] = (), depolarizing: Sequence[float] = (), readout: Sequence[float] = ()
) -> list[dict]:
    """One evaluation setting per value: each varies one knob from the exact, noiseless kernel."""
    settings = [{"shots": None, "depolarizing": 0.0, "readout": 0.0}]
    settings += [{"shots": n, "depolarizing": 0.0, "readout": 0.0} for n in shots]
    settings += [{"shots": None, "depolarizing": p, "readout": 0.0} for p in depolarizing]
    settings += [{"shots": None, "depolarizing": 0.0, "readout": e} for e in readout]
    return settings


def circuit_maps(run: FinishedRun, nothing_to_do: str) -> list[CircuitFeatureMap]:
    """Every patched layer's circuit map; an error (ending with ``nothing_to_do``) for other runs."""
    maps = [m.featuremap for m in run.model.modules() if isinstance(m, KernelAttention)]
    if not maps or not all(isinstance(fm, CircuitFeatureMap) for fm in maps):
        raise ValueError(f"{run.path} was not trained with a quantum circuit feature map; {nothing_to_do}")
    return maps


def evaluate_quantum(
    run_dir: str | Path,
    shots: Sequence[int] = (),
    depolarizing: Sequence[float] = (),
    readout: Sequence[float] = (),
    device: str | None = None,
) -> dict[str, Any]:
    """Accuracy of a trained quantum-kernel model when its kernels are sampled or noisy, as on a QPU.

    The model is trained with exact kernels; each setting switches every patched layer's circuit
    map to ``shots`` samples per kernel value, or adds depolarizing or readout noise, and
    re-evaluates the test set.  Results go into ``metrics.json["quantum"]``, each setting as soon as
    it is measured: a repeated call skips the settings already there, so an interrupted sweep resumes.
    """
    run = load_finished_run(run_dir, device)
    maps = circuit_maps(run, "nothing to sample or perturb")
    done = {quantum_setting_key(result): result for result in run.recorded("quantum", [])}
    results = []
    for setting in quantum_settings(shots, depolarizing, readout):
        key = quantum_setting_key(setting)
        if key not in done:  # an interrupted evaluation picks up where it stopped
            for fm in maps:  # every setting draws the same shot-noise stream
                fm.set_measurement(shots=setting["shots"], noise={"depolarizing": setting["depolarizing"],
                                                                  "readout": setting["readout"]})
            batch = min(run.config.eval_batch_size, READOUT_EVAL_BATCH) if setting["readout"] else None
            done[key] = setting | run.scores(batch_size=batch)
            run.record("quantum", list(done.values()))
        results.append(done[key])
    run.record("quantum", results)
    return {"settings": results}


#: what a hardware-interface evaluation setting is: the engine, its backend, shots, transpiler level, reviews
BACKEND_KNOBS = ("engine", "backend", "shots", "optimization_level", "samples")


def _agreement(measured: dict[str, Any], exact: dict[str, Any]) -> float | None:
    """The share of reviews whose predicted class is the exact kernel's (None for records without predictions)."""
    if "predicted" not in measured or "predicted" not in exact:
        return None
    same = np.asarray(measured["predicted"]) == np.asarray(exact["predicted"])
    return float(same.mean())


def backend_review_key(setting: dict[str, Any]) -> str:
    """Where a setting's per-review logits are kept: every knob but the number of reviews."""
    return "|".join(str(setting[k]) for k in BACKEND_KNOBS if k != "samples")


def evaluate_backend(
    run_dir: str | Path,
    engine: str,
    backend: str | None = None,
    shots: Sequence[int] = (1024,),
    max_eval_samples: int = 32,
    optimization_level: int = 1,
    device: str | None = None,
) -> dict[str, Any]:
    """Accuracy of a trained quantum-kernel model with its circuits run through a real interface.

    Every patched layer's circuit map switches to ``engine`` — ``sampler`` (Qiskit maps: a SamplerV2,
    ``backend`` = ``aer`` or ``fake_torino`` …, circuits transpiled at ``optimization_level``) or
    ``framework`` (``backend`` = a PennyLane device name, or Qiskit's ``statevector``/``aer``) — with
    ``shots``, and the first ``max_eval_samples`` test reviews are classified; the exact kernel's
    accuracy on the same reviews is recorded next to it.  Results go into
    ``metrics.json["quantum_backends"]``, one entry per setting as soon as it is measured; settings
    on record are skipped.

    Through a noisy simulator one review can take minutes (FakeTorino: ~18,000 noisy circuits a review at
    length 128), so reviews run one at a time, each one's logits recorded as soon as it is classified
    (``metrics.json["quantum_backend_reviews"]``): an interrupted evaluation resumes at the next review, and
    asking for more reviews later measures only the new ones.  One review at a time also runs no circuits
    for padding.
    """
    if max_eval_samples < 1:
        raise ValueError(f"--max-eval-samples must be at least 1, got {max_eval_samples}")
    run = load_finished_run(run_dir, device)
    maps = circuit_maps(run, f"nothing to run on {engine!r}")
    texts, labels = run.texts[:max_eval_samples], run.labels[:max_eval_samples]
    trained_engines = [fm.engine for fm in maps]

    def classify(chosen: Sequence[str]) -> np.ndarray:
        return predict(run.model, run.tokenizer, chosen, run.config.max_length, run.config.eval_batch_size)

    def summary(logits: np.ndarray) -> dict[str, Any]:
        """Accuracy and F1 on the chosen reviews, and each review's predicted class (to pair with the exact's)."""
        return classification_metrics(logits, labels) | {"predicted": np.asarray(logits).argmax(-1).tolist()}

    done = {tuple(r[k] for k in BACKEND_KNOBS): r for r in run.recorded("quantum_backends", [])}
    exact = next((r["exact"] for r in done.values() if r["samples"] == len(texts)), None)
    results = []
    for count in shots:
        setting = {"engine": engine, "backend": backend, "shots": count,
                   "optimization_level": optimization_level if engine == "sampler" else None,
                   "samples": len(texts)}  # fmt: skip
        key = tuple(setting[k] for k in BACKEND_KNOBS)
        if key not in done:
            if exact is None:  # the exact kernel on the same reviews: the reference
                for fm, trained in zip(maps, trained_engines, strict=True):
                    fm.set_engine(trained)
                    fm.set_measurement(shots=None)
                exact = summary(classify(texts))
            options = {"optimization_level": optimization_level} if engine == "sampler" else {}
            for fm in maps:
                fm.set_engine(engine, backend, **options)
                fm.set_measurement(shots=count)
            reviews_key = backend_review_key(setting)
            logits = list(run.recorded("quantum_backend_reviews", {}).get(reviews_key, []))[: len(texts)]
            with tqdm(total=len(texts), initial=len(logits), unit="review", desc=f"{engine} {backend}, {count} shots",
                      mininterval=10) as progress:  # fmt: skip
                for text in texts[len(logits) :]:
                    logits.append(classify([text])[0].tolist())
                    run.record("quantum_backend_reviews", {reviews_key: logits}, merge=True)
                    progress.update()
            measured = summary(np.asarray(logits))
            done[key] = setting | measured | {"exact": exact, "accuracy_change": measured["accuracy"]
                                              - exact["accuracy"],
                                              "agreement_with_exact": _agreement(measured, exact)}  # fmt: skip
            run.record("quantum_backends", list(done.values()))
        results.append(done[key])
    return {"settings": results}
