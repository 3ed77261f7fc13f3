"""Reliability: file modes, data errors, NaN runs, checkpoints, signals, WordNet set-up (issue 17)."""

from __future__ import annotations

import os
import stat

import pytest


def test_result_files_are_written_0644_like_any_other_file(tmp_path):
    from qra.experiment.provenance import write_json_atomic, write_text_atomic

    previous = os.umask(0o022)
    try:
        text = write_text_atomic(tmp_path / "README.md", "# results\n")
        data = write_json_atomic(tmp_path / "summary.json", {"a": 1})
    finally:
        os.umask(previous)
    for path in (text, data):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert not list(tmp_path.glob(".*.tmp"))


import errno  # noqa: E402
import json  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from qra.cli import app  # noqa: E402

from .test_train_cli import invoke_crashing, train_args  # noqa: E402


def invoke(args, **kwargs):
    return CliRunner().invoke(app, [str(arg) for arg in args], **kwargs)


def flat(output: str) -> str:
    return " ".join(output.split())


# item 1: resume


def test_resume_of_a_finished_run_keeps_its_results_and_trains_nothing(tiny_model_dir, tiny_data_dir, tmp_path,
                                                                      monkeypatch):  # fmt: skip
    from transformers import Trainer

    out = tmp_path / "run"
    args = train_args(tiny_model_dir, tiny_data_dir, out, "--featuremap", "rff", "--m", "16", "--sigma", "1.0")
    assert invoke(args).exit_code == 0
    assert invoke(["eval", out, "--robustness", "word-dropout=0.1"]).exit_code == 0
    before = json.loads((out / "metrics.json").read_text())
    monkeypatch.setattr(Trainer, "train", lambda *a, **k: pytest.fail("a finished run was trained again"))
    resumed = invoke([*args, "--resume", "--robustness", "word-dropout=0.2"])
    assert resumed.exit_code == 0, resumed.output
    after = json.loads((out / "metrics.json").read_text())
    assert after["robustness"]["word-dropout=0.1"] == before["robustness"]["word-dropout=0.1"]  # kept
    assert "word-dropout=0.2" in after["robustness"]  # the newly asked setting, evaluated after train()
    assert {k: v for k, v in after.items() if k != "robustness"} == {k: v for k, v in before.items()
                                                                      if k != "robustness"}  # fmt: skip
    refused = invoke([*args[:-1], "5.0", "--resume"])  # --sigma 5.0 on the sigma = 1 run
    assert refused.exit_code == 2
    assert "featuremap_params: recorded" in flat(refused.output) and "'sigma': 5.0" in flat(refused.output)
    assert json.loads((out / "metrics.json").read_text()) == after


def test_resume_of_an_interrupted_run_refuses_other_settings(tiny_model_dir, tiny_data_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    args = train_args(tiny_model_dir, tiny_data_dir, out, "--featuremap", "rff", "--m", "16", "--save-steps", "2")
    assert invoke_crashing(monkeypatch, args).exit_code != 0
    refused = invoke([*args, "--resume", "--lr", "1e-3", "--layers", "5"])
    assert refused.exit_code == 2
    message = flat(refused.output)
    assert "lr: recorded 5e-05, now 0.001" in message and "layers: recorded [4, 5], now [5]" in message
    # settings that cannot change the model may differ
    resumed = invoke([*args, "--resume", "--eval-batch-size", "4", "--attention-samples", "4"])
    assert resumed.exit_code == 0, resumed.output


# item 2: non-finite training


def test_a_nan_feature_map_fails_the_run_and_the_report_lists_it_apart(tiny_model_dir, tiny_data_dir, tmp_path,
                                                                       monkeypatch):  # fmt: skip
    from qra.featuremaps.rff import RandomFourierFeatures

    from .test_report import fake_run

    monkeypatch.setattr(RandomFourierFeatures, "forward", lambda self, x: torch.full((*x.shape[:-1], self.m), math_nan))
    out = tmp_path / "runs" / "nan" / "seed0"
    result = invoke(train_args(tiny_model_dir, tiny_data_dir, out, "--featuremap", "rff", "--m", "16"))
    assert result.exit_code == 2, result.output
    assert "error:" in result.output and "nan" in result.output.lower()
    failure = json.loads((out / "failed.json").read_text())
    assert "nan" in failure["reason"].lower() and not (out / "metrics.json").exists()
    fake_run(tmp_path / "runs", "baseline", 0, "none", 0.8)
    report = invoke(["report", tmp_path / "runs", "--out", tmp_path / "report"])
    assert report.exit_code == 0, report.output
    readme = (tmp_path / "report" / "README.md").read_text()
    assert "## Failed runs" in readme and str(out) in readme
    assert [row["featuremap"] for row in json.loads((tmp_path / "report" / "summary.json").read_text())] == ["none"]


math_nan = float("nan")


def test_non_finite_logits_and_attention_are_errors_not_zeros():
    import numpy as np

    from qra.experiment.metrics import NonFiniteError, classification_metrics

    with pytest.raises(NonFiniteError, match="1 of 2 reviews"):
        classification_metrics(np.array([[0.1, 0.2], [np.nan, 0.0]]), np.array([0, 1]))


def test_report_without_failed_runs_has_no_failed_section(tmp_path):
    from .test_report import fake_run

    fake_run(tmp_path / "runs", "baseline", 0, "none", 0.8)
    assert invoke(["report", tmp_path / "runs", "--out", tmp_path / "report"]).exit_code == 0
    assert "Failed runs" not in (tmp_path / "report" / "README.md").read_text()


# items 7 and 8: bad data, bad settings


def write_split(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_text(text)
    return directory


GOOD_TEST = "".join(json.dumps({"text": f"review {i}", "label": i % 2}) + "\n" for i in range(4))


@pytest.mark.parametrize(
    ("train_text", "message"),
    [('{"text": "good", "label": 1}\n{"text": "bad", label: 0}\n', "train.jsonl, line 2: not valid JSON"),
     ("", "train.jsonl is empty"),
     ("\n\n", "train.jsonl is empty"),
     ('{"text": "good", "label": 1}\n{"text": "  ", "label": 0}\n', "1 empty or missing review(s) (rows 1,"),
     ('{"text": "good", "label": 1}\n{"text": "fine", "label": 1}\n', "holds only label [1]")],
    ids=["malformed-line", "empty-file", "blank-file", "empty-review", "single-class"],
)  # fmt: skip
def test_bad_data_files_are_explained(tmp_path, train_text, message):
    from qra.experiment.data import DataError, load_text_classification

    directory = write_split(tmp_path / "data", "train.jsonl", train_text)
    write_split(directory, "test.jsonl", GOOD_TEST)
    with pytest.raises(DataError) as error:
        load_text_classification(directory)
    assert message in str(error.value)


@pytest.mark.parametrize(
    ("extra", "message"),
    [(["--epochs", "0"], "--epochs must be > 0"),
     (["--featuremap", "rff", "--sigma", "inf"], "sigma must be a finite number > 0"),
     (["--featuremap", "rff", "--fm", "sigma=NaN"], "sigma must be a finite number > 0"),
     (["--beta", "nan"], "beta must be a finite number")],
)  # fmt: skip
def test_bad_settings_are_refused_before_training(tiny_model_dir, tiny_data_dir, tmp_path, extra, message):
    result = invoke(train_args(tiny_model_dir, tiny_data_dir, tmp_path / "run", *extra))
    assert result.exit_code == 2, result.output
    assert message in flat(result.output) and "error: " in result.output


# item 7: checkpoints and a full disk


def test_a_corrupted_checkpoint_is_named_with_how_to_start_over(tiny_model_dir, tiny_data_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    args = train_args(tiny_model_dir, tiny_data_dir, out, "--featuremap", "rff", "--m", "16", "--save-steps", "2")
    assert invoke_crashing(monkeypatch, args).exit_code != 0
    checkpoint = out / "checkpoints" / "checkpoint-2"
    (checkpoint / "model.safetensors").write_bytes(b"\x00garbage")
    result = invoke([*args, "--resume"])
    assert result.exit_code == 2, result.output
    message = flat(result.output)
    assert f"cannot resume from {checkpoint}" in message and "without --resume to start over" in message


def test_a_full_disk_is_explained_and_a_rerun_goes_on(tiny_model_dir, tiny_data_dir, tmp_path, monkeypatch):
    from transformers import Trainer

    out = tmp_path / "run"
    args = train_args(tiny_model_dir, tiny_data_dir, out, "--featuremap", "rff", "--m", "16", "--save-steps", "2")
    original = Trainer._save_checkpoint

    def disk_full(self, model, trial=None, **kwargs):
        partial = out / "checkpoints" / f"checkpoint-{self.state.global_step}"
        partial.mkdir(parents=True)
        (partial / "model.safetensors").write_bytes(b"half a file")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Trainer, "_save_checkpoint", disk_full)
    result = invoke(args)
    assert result.exit_code == 2 and "no space left on the device" in flat(result.output)
    assert "--resume" in flat(result.output)
    monkeypatch.setattr(Trainer, "_save_checkpoint", original)
    plain = invoke(args)  # the incomplete checkpoint is no "unfinished run": a plain rerun starts over
    assert plain.exit_code == 0, plain.output
    assert (out / "metrics.json").is_file()


def test_disk_full_then_resume_starts_over_without_a_complete_checkpoint(tiny_model_dir, tiny_data_dir, tmp_path):
    out = tmp_path / "run"
    args = train_args(tiny_model_dir, tiny_data_dir, out, "--featuremap", "rff", "--m", "16", "--save-steps", "2")
    (out / "checkpoints" / "checkpoint-4").mkdir(parents=True)  # what a full disk leaves: no trainer_state.json
    refused_before = invoke([*args, "--resume"])
    assert refused_before.exit_code == 0, refused_before.output
    assert not (out / "checkpoints").exists()  # pruned with the completed run (item 13)


# item 13: checkpoints of a completed run


def test_checkpoints_are_pruned_when_a_run_completes_unless_kept(tiny_model_dir, tiny_data_dir, tmp_path):
    pruned, kept = tmp_path / "pruned", tmp_path / "kept"
    assert invoke(train_args(tiny_model_dir, tiny_data_dir, pruned, "--save-steps", "2")).exit_code == 0
    assert not (pruned / "checkpoints").exists() and (pruned / "model" / "config.json").is_file()
    result = invoke(train_args(tiny_model_dir, tiny_data_dir, kept, "--save-steps", "2", "--keep-checkpoints"))
    assert result.exit_code == 0, result.output
    assert (kept / "checkpoints" / "checkpoint-6" / "trainer_state.json").is_file()
    assert json.loads((kept / "config.json").read_text())["config"]["keep_checkpoints"] is True


# item 9: signals


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_during_training_saves_a_checkpoint_that_resume_continues(tiny_model_dir, tiny_data_dir, tmp_path,
                                                                           signum):  # fmt: skip
    out = tmp_path / "run"
    args = train_args(tiny_model_dir, tiny_data_dir, out, "--featuremap", "rff", "--m", "16", "--save-steps", "1000",
                      "--max-train-samples", "8")[1:]  # fmt: skip
    args[args.index("--epochs") + 1] = "400"  # one step an epoch: long enough to be stopped
    process = subprocess.Popen([sys.executable, "-m", "qra", "train", *args], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)  # fmt: skip
    log = out / "train_log.jsonl"
    deadline = time.time() + 120
    while not (log.is_file() and log.read_text().strip()) and time.time() < deadline and process.poll() is None:
        time.sleep(0.2)  # the first log (step 50): training is under way
    process.send_signal(signum)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 128 + signum, output[-2000:]
    assert "--resume" in output
    [checkpoint] = (out / "checkpoints").glob("checkpoint-*")
    stopped_at = int(checkpoint.name.split("-")[1])
    assert 50 <= stopped_at < 400 and (checkpoint / "trainer_state.json").is_file()
    assert not (out / "metrics.json").exists()
    args[args.index("--epochs") + 1] = "400"
    resumed = subprocess.run([sys.executable, "-m", "qra", "train", *args, "--resume"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads((out / "metrics.json").read_text())["resumed_from_checkpoint"] == checkpoint.name


# item 11: WordNet offline


def fake_debian_wordnet(folder: Path) -> Path:
    """A tiny WordNet 3.0 dict folder laid out as Debian's wordnet-base + wordnet-sense-index install it
    (no lexnames): one noun synset {film, movie}."""
    folder.mkdir(parents=True)
    for part in ("adj", "adv", "noun", "verb"):
        for name in (f"data.{part}", f"index.{part}", f"{part}.exc"):
            (folder / name).write_text("")
    (folder / "data.adj").write_text("  1 WordNet 3.0 Copyright 2006 by Princeton University.  All rights reserved.\n")
    (folder / "data.noun").write_text("00000000 06 n 02 film 0 movie 0 000 | a motion picture  \n")
    (folder / "index.noun").write_text("film n 1 0 1 0 00000000  \nmovie n 1 0 1 0 00000000  \n")
    (folder / "index.sense").write_text("film%1:06:00:: 00000000 1 0\nmovie%1:06:00:: 00000000 1 0\n")
    return folder


@pytest.fixture
def nltk_data_path(monkeypatch, tmp_path):
    """NLTK searching only a fresh folder, with a fresh lazy WordNet loader (nothing loaded before)."""
    import nltk
    from nltk.corpus.reader import CorpusReader, WordNetCorpusReader
    from nltk.corpus.util import LazyCorpusLoader

    data = tmp_path / "nltk_data"
    data.mkdir()
    monkeypatch.setattr(nltk.data, "path", [str(data)])
    omw = LazyCorpusLoader("omw-1.4", CorpusReader, r".*/wn-data-.*\.tab", encoding="utf8")
    monkeypatch.setattr(nltk.corpus, "wordnet", LazyCorpusLoader("wordnet", WordNetCorpusReader, omw))
    return data


def test_setup_wordnet_builds_nltks_corpus_from_debians_files(tmp_path, nltk_data_path):
    from qra.experiment.robustness import WordNetSynonyms
    from qra.experiment.wordnet import LEXNAMES, lexnames_text

    assert len(LEXNAMES) == 45 and lexnames_text().splitlines()[44] == "44\tadj.ppl\t3"
    source = fake_debian_wordnet(tmp_path / "usr-share-wordnet")
    linked = tmp_path / "linked"
    linked.symlink_to(source)  # NLTK refuses a linked corpus; qra copies the files
    result = invoke(["setup-wordnet", "--source", linked, "--data-dir", nltk_data_path])
    assert result.exit_code == 0, result.output
    corpus = nltk_data_path / "corpora" / "wordnet"
    assert corpus.is_dir() and not corpus.is_symlink() and (corpus / "lexnames").read_text() == lexnames_text()
    assert WordNetSynonyms().synonyms("film") == ("movie",)
    again = invoke(["setup-wordnet", "--source", source, "--data-dir", nltk_data_path])  # rebuilding replaces it
    assert again.exit_code == 0, again.output
    assert sorted(p.name for p in (nltk_data_path / "corpora").iterdir()) == ["wordnet"]


def test_setup_wordnet_explains_missing_files(tmp_path, nltk_data_path):
    missing = invoke(["setup-wordnet", "--source", tmp_path / "nowhere", "--data-dir", nltk_data_path])
    assert missing.exit_code == 2 and "apt-get install wordnet-base wordnet-sense-index" in flat(missing.output)
    source = fake_debian_wordnet(tmp_path / "dict")
    (source / "index.sense").unlink()
    partial = invoke(["setup-wordnet", "--source", source, "--data-dir", nltk_data_path])
    assert partial.exit_code == 2 and "lacks index.sense" in flat(partial.output)


def test_training_checks_for_wordnet_before_it_starts(tiny_model_dir, tiny_data_dir, tmp_path, nltk_data_path):
    out = tmp_path / "run"
    result = invoke(train_args(tiny_model_dir, tiny_data_dir, out, "--robustness", "synonym-swap=0.1"))
    assert result.exit_code == 2
    message = flat(result.output)
    assert "qra setup-wordnet" in message and "nltk.download('wordnet')" in message
    assert not (out / "config.json").exists()  # refused before training, not after it
