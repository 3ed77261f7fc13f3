"""Deterministic, seeded text perturbations: word dropout and WordNet synonym swaps.

``word-dropout`` deletes any word, ``synonym-swap`` replaces non-stopwords by a synonym in their most
frequent part of speech.  The protocol's own settings are two more: ``content-word-dropout`` deletes only
non-stopwords (each with probability ``rate``; stopwords are sklearn's English list), and ``adjective-swap``
replaces only adjectives by adjective synonyms.  Without a tagger, a word counts as an adjective when WordNet
has adjective synsets for it (part of speech ``a`` or ``s``, satellite adjectives), whatever its other parts
of speech; its synonyms are the lemmas of those synsets.

Each text gets its own random stream, derived from (seed, perturbation, rate, text index), so a
perturbed test set is the same in every run and every arm of an experiment.
"""

from __future__ import annotations

import dataclasses
import re
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol

import numpy as np
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

PERTURBATIONS = ("word-dropout", "synonym-swap", "content-word-dropout", "adjective-swap")
#: the perturbations that need WordNet
WORDNET_PERTURBATIONS = ("synonym-swap", "adjective-swap")
#: WordNet's parts of speech of adjectives: head adjectives and satellites
ADJECTIVE_POS = ("a", "s")
WORD = re.compile(r"[A-Za-z]+")


class RobustnessError(ValueError):
    """A perturbation cannot run: unknown name, bad rate, or missing WordNet (with the fix)."""


class SynonymSource(Protocol):
    def synonyms(self, word: str) -> Sequence[str]:
        """Synonyms of ``word`` with the same part of speech, lowercase, excluding the word itself."""

    def adjective_synonyms(self, word: str) -> Sequence[str] | None:
        """None when ``word`` is not an adjective; else its adjective synonyms (possibly none)."""


@dataclass(frozen=True)
class SynonymTable:
    """Synonyms from a plain mapping (tests, or a user's own thesaurus); ``adjectives`` maps each adjective
    to its adjective synonyms (words absent from it are not adjectives)."""

    table: Mapping[str, Sequence[str]]
    adjectives: Mapping[str, Sequence[str]] = dataclasses.field(default_factory=dict)

    def synonyms(self, word: str) -> Sequence[str]:
        return self.table.get(word.lower(), ())

    def adjective_synonyms(self, word: str) -> Sequence[str] | None:
        found = self.adjectives.get(word.lower())
        return None if found is None else tuple(found)


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

    @lru_cache(maxsize=100_000)  # noqa: B019 - one instance per run; the cache is the point
    def adjective_synonyms(self, word: str) -> Sequence[str] | None:
        """None unless WordNet has adjective synsets (``a``/``s``) for ``word``; then their one-word lemmas."""
        synsets = [synset for synset in self._wordnet.synsets(word.lower()) if synset.pos() in ADJECTIVE_POS]
        if not synsets:
            return None
        names = {lemma.name().replace("_", " ").lower() for synset in synsets for lemma in synset.lemmas()}
        names.discard(word.lower())
        return tuple(sorted(name for name in names if " " not in name))


def needs_wordnet(settings: Mapping[str, Sequence[float]]) -> bool:
    """Whether robustness ``settings`` include a perturbation that needs WordNet."""
    return any(kind in settings for kind in WORDNET_PERTURBATIONS)


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


def content_word_dropout(text: str, rate: float, rng: np.random.Generator) -> str:
    """Delete each non-stopword (a word whose letters are not an English stopword) with probability ``rate``.

    Stopwords and punctuation stay; at least one word of the text survives.
    """
    words = text.split()
    if not words:
        return text
    content = np.array([_letters(word) not in ENGLISH_STOP_WORDS and bool(_letters(word)) for word in words])
    drop = (rng.random(len(words)) < rate) & content
    if drop.all():
        drop[rng.integers(len(words))] = False
    return " ".join(word for word, dropped in zip(words, drop, strict=True) if not dropped)


def _letters(word: str) -> str:
    return "".join(WORD.findall(word)).lower()


def adjective_swap(text: str, rate: float, rng: np.random.Generator, source: SynonymSource) -> str:
    """Replace round(rate × adjectives) adjectives by an adjective synonym (an adjective: see the module docstring).

    The adjectives to swap are drawn among all adjectives of the text (stopwords excluded); a drawn one
    without a synonym stays.  Capitalisation of the first letter is kept.
    """
    matches = [m for m in WORD.finditer(text)
               if m.group().lower() not in ENGLISH_STOP_WORDS and source.adjective_synonyms(m.group()) is not None]
    return _swap(text, matches, rate, rng, lambda word: source.adjective_synonyms(word) or ())


def synonym_swap(text: str, rate: float, rng: np.random.Generator, source: SynonymSource) -> str:
    """Replace round(rate × eligible) eligible words by a synonym (eligible: alphabetic, not a stop word).

    The words to swap are drawn among the eligible ones; a drawn word without a synonym stays.
    Capitalisation of the first letter is kept.
    """
    matches = [m for m in WORD.finditer(text) if m.group().lower() not in ENGLISH_STOP_WORDS]
    return _swap(text, matches, rate, rng, source.synonyms)


def _swap(text: str, matches: list[re.Match], rate: float, rng: np.random.Generator,
          synonyms: Callable[[str], Sequence[str]]) -> str:  # fmt: skip
    count = round(rate * len(matches))
    if count == 0:
        return text
    chosen = sorted(rng.choice(len(matches), size=count, replace=False))
    pieces, last = [], 0
    for index in chosen:
        match = matches[index]
        options = synonyms(match.group())
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
    if kind == "content-word-dropout":
        return content_word_dropout
    if kind in WORDNET_PERTURBATIONS:
        source = synonyms if synonyms is not None else WordNetSynonyms()
        swap = synonym_swap if kind == "synonym-swap" else adjective_swap
        return lambda text, rate, rng: swap(text, rate, rng, source)
    raise RobustnessError(f"unknown perturbation {kind!r}; accepted: {', '.join(PERTURBATIONS)}")


def perturb(
    texts: Sequence[str], kind: str, rate: float, seed: int = 0, synonyms: SynonymSource | None = None
) -> list[str]:
    """The perturbed texts, deterministic in (seed, kind, rate, position)."""
    apply = perturbation(kind, synonyms)
    return [apply(text, rate, _rng(seed, kind, rate, index)) for index, text in enumerate(texts)]
