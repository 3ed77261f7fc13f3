"""Deterministic, seeded text perturbations: word dropout and WordNet synonym swaps.

Each text gets its own random stream, derived from (seed, perturbation, rate, text index), so a
perturbed test set is the same in every run and every arm of an experiment.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol

import numpy as np
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

PERTURBATIONS = ("word-dropout", "synonym-swap")
WORD = re.compile(r"[A-Za-z]+")


class RobustnessError(ValueError):
    """A perturbation cannot run: unknown name, bad rate, or missing WordNet (with the fix)."""


class SynonymSource(Protocol):
    def synonyms(self, word: str) -> Sequence[str]:
        """Synonyms of ``word`` with the same part of speech, lowercase, excluding the word itself."""


@dataclass(frozen=True)
class SynonymTable:
    """Synonyms from a plain mapping (tests, or a user's own thesaurus)."""

    table: Mapping[str, Sequence[str]]

    def synonyms(self, word: str) -> Sequence[str]:
        return self.table.get(word.lower(), ())


class WordNetSynonyms:
    """WordNet synonyms through NLTK, in the word's most frequent part of speech.

    Without a tagger, a word's part of speech is taken as that of its first (most frequent)
    WordNet synset; the synonyms are the lemmas of all its synsets of that part of speech.
    """

    def __init__(self) -> None:
        try:
            from nltk.corpus import wordnet

            wordnet.ensure_loaded()
        except Exception as error:  # not installed (ImportError, LookupError), or an incomplete corpus
            cause = ("NLTK found no corpora/wordnet in its data paths (nltk.data.path, $NLTK_DATA)"
                     if isinstance(error, LookupError) else f"{type(error).__name__}: {error}")  # fmt: skip
            raise RobustnessError(
                "synonym-swap needs WordNet through NLTK, which did not load. Offline: `qra setup-wordnet` builds "
                "it from Debian's packages (apt-get install wordnet-base wordnet-sense-index); online: python -c "
                "\"import nltk; nltk.download('wordnet')\" (it exits 0 even when the download fails: check that "
                f"it printed no error). Cause: {cause}"
            ) from error
        self._wordnet = wordnet

    @lru_cache(maxsize=100_000)  # noqa: B019 - one instance per run; the cache is the point
    def synonyms(self, word: str) -> Sequence[str]:
        synsets = self._wordnet.synsets(word.lower())
        if not synsets:
            return ()
        pos = synsets[0].pos()
        names = {
            lemma.name().replace("_", " ").lower()
            for synset in synsets
            if synset.pos() == pos
            for lemma in synset.lemmas()
        }
        names.discard(word.lower())
        return tuple(sorted(name for name in names if " " not in name))


def require_wordnet() -> None:
    """Check that WordNet loads (a :class:`RobustnessError` with the fix if not): before training, not after."""
    WordNetSynonyms()


def _rng(seed: int, kind: str, rate: float, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(kind.encode()), round(rate * 1_000_000), index])


def word_dropout(text: str, rate: float, rng: np.random.Generator) -> str:
    """Delete each whitespace-separated word with probability ``rate`` (at least one word survives)."""
    words = text.split()
    if not words:
        return text
    keep = rng.random(len(words)) >= rate
    if not keep.any():
        keep[rng.integers(len(words))] = True
    return " ".join(word for word, kept in zip(words, keep, strict=True) if kept)


def synonym_swap(text: str, rate: float, rng: np.random.Generator, source: SynonymSource) -> str:
    """Replace round(rate × eligible) eligible words by a synonym (eligible: alphabetic, not a stop word).

    The words to swap are drawn among the eligible ones; a drawn word without a synonym stays.
    Capitalisation of the first letter is kept.
    """
    matches = [m for m in WORD.finditer(text) if m.group().lower() not in ENGLISH_STOP_WORDS]
    count = round(rate * len(matches))
    if count == 0:
        return text
    chosen = sorted(rng.choice(len(matches), size=count, replace=False))
    pieces, last = [], 0
    for index in chosen:
        match = matches[index]
        options = source.synonyms(match.group())
        if not options:
            continue
        replacement = options[rng.integers(len(options))]
        if match.group()[0].isupper():
            replacement = replacement[0].upper() + replacement[1:]
        pieces += [text[last : match.start()], replacement]
        last = match.end()
    return "".join([*pieces, text[last:]])


def parse_settings(specs: Sequence[str]) -> dict[str, list[float]]:
    """``["word-dropout=0.1,0.2", "synonym-swap=0.1"]`` -> ``{"word-dropout": [0.1, 0.2], ...}``."""
    settings: dict[str, list[float]] = {}
    for spec in specs:
        name, _, rates = spec.partition("=")
        name = name.strip()
        if name not in PERTURBATIONS or not rates:
            raise RobustnessError(
                f"bad --robustness {spec!r}: expected NAME=RATE[,RATE...] with NAME one of {', '.join(PERTURBATIONS)}"
            )
        try:
            values = [float(rate) for rate in rates.split(",")]
        except ValueError:
            raise RobustnessError(f"bad rates in --robustness {spec!r}: use numbers in [0, 1]") from None
        if any(not 0 <= value <= 1 for value in values):
            raise RobustnessError(f"rates in --robustness {spec!r} must lie in [0, 1]")
        settings.setdefault(name, []).extend(values)
    return settings


def perturbation(kind: str, synonyms: SynonymSource | None = None) -> Callable[[str, float, np.random.Generator], str]:
    if kind == "word-dropout":
        return word_dropout
    if kind == "synonym-swap":
        source = synonyms if synonyms is not None else WordNetSynonyms()
        return lambda text, rate, rng: synonym_swap(text, rate, rng, source)
    raise RobustnessError(f"unknown perturbation {kind!r}; accepted: {', '.join(PERTURBATIONS)}")


def perturb(
    texts: Sequence[str], kind: str, rate: float, seed: int = 0, synonyms: SynonymSource | None = None
) -> list[str]:
    """The perturbed texts, deterministic in (seed, kind, rate, position)."""
    apply = perturbation(kind, synonyms)
    return [apply(text, rate, _rng(seed, kind, rate, index)) for index, text in enumerate(texts)]
