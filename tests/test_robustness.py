"""Perturbations: deterministic, with the right rates; synonym swaps from a tiny table."""

from __future__ import annotations

import numpy as np
import pytest

from qra.experiment import robustness
from qra.experiment.robustness import RobustnessError, SynonymTable, parse_settings, perturb, synonym_swap, word_dropout

TABLE = SynonymTable({"good": ["fine"], "movie": ["film"], "actors": ["players"], "plot": ["storyline"]})


def test_word_dropout_is_deterministic_and_has_the_right_rate():
    text = " ".join(f"w{i}" for i in range(5000))
    once = perturb([text], "word-dropout", 0.2, seed=1)[0]
    assert once == perturb([text], "word-dropout", 0.2, seed=1)[0]
    assert once != perturb([text], "word-dropout", 0.2, seed=2)[0]
    kept = len(once.split()) / 5000
    assert 0.78 < kept < 0.82
    assert perturb([text], "word-dropout", 0.0)[0] == text


def test_word_dropout_keeps_at_least_one_word():
    assert len(word_dropout("one two", 1.0, np.random.default_rng(0)).split()) == 1


def test_synonym_swap_replaces_the_right_number_of_eligible_words():
    text = "The good movie had good actors and a good plot"
    # eligible (not stop words): good, movie, good, actors, good, plot -> 6; rate 0.5 swaps 3
    swapped = synonym_swap(text, 0.5, np.random.default_rng(0), TABLE)
    changed = [a for a, b in zip(text.split(), swapped.split(), strict=True) if a != b]
    assert len(changed) == 3
    assert "The" in swapped and "had" in swapped and "and" in swapped  # stop words untouched
    assert (
        synonym_swap(text, 1.0, np.random.default_rng(0), TABLE)
        == "The fine film had fine players and a fine storyline"
    )


def test_synonym_swap_keeps_capitals_and_is_deterministic():
    text = "Good movie"
    assert synonym_swap(text, 1.0, np.random.default_rng(0), TABLE) == "Fine film"
    texts = ["good movie", "bad plot"] * 3
    assert perturb(texts, "synonym-swap", 0.5, synonyms=TABLE) == perturb(texts, "synonym-swap", 0.5, synonyms=TABLE)


def test_settings_parse_and_errors_say_what_is_accepted():
    assert parse_settings(["word-dropout=0.1,0.2", "synonym-swap=0.1"]) == {
        "word-dropout": [0.1, 0.2], "synonym-swap": [0.1]
    }  # fmt: skip
    with pytest.raises(RobustnessError, match="word-dropout, synonym-swap"):
        parse_settings(["typo-swap=0.1"])
    with pytest.raises(RobustnessError, match=r"\[0, 1\]"):
        parse_settings(["word-dropout=1.5"])


def test_missing_wordnet_gives_the_fix(monkeypatch):
    import nltk.corpus

    class Missing:
        def ensure_loaded(self):
            raise LookupError("Resource wordnet not found.")

    monkeypatch.setattr(nltk.corpus, "wordnet", Missing())
    with pytest.raises(RobustnessError, match=r"nltk.download\('wordnet'\)"):
        robustness.WordNetSynonyms()
