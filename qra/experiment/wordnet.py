"""WordNet for synonym swaps without the internet: NLTK's ``wordnet`` corpus built from Debian's packages.

``nltk.download("wordnet")`` needs the internet (and exits 0 when it fails).  Debian ships the same
WordNet 3.0 database: ``wordnet-base`` (the data, index and exception files) and
``wordnet-sense-index`` (``index.sense``) install it under ``/usr/share/wordnet``.  NLTK cannot read
that folder as it is: it wants a real folder ``corpora/wordnet`` under one of its data paths (it
refuses a symbolic link there) and a ``lexnames`` file, which Debian does not install.
:func:`build_nltk_wordnet` copies the files and writes ``lexnames`` from :data:`LEXNAMES`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

DEBIAN_WORDNET_DIR = Path("/usr/share/wordnet")
DEBIAN_PACKAGES = ("wordnet-base", "wordnet-sense-index")
#: WordNet 3.0's 45 lexicographer files, in the order of their numbers, with their syntactic category
#: (1 noun, 2 verb, 3 adjective, 4 adverb): the ``lexnames`` file of the WordNet distribution
LEXNAMES: tuple[tuple[str, int], ...] = (
    ("adj.all", 3), ("adj.pert", 3), ("adv.all", 4), ("noun.Tops", 1), ("noun.act", 1), ("noun.animal", 1),
    ("noun.artifact", 1), ("noun.attribute", 1), ("noun.body", 1), ("noun.cognition", 1),
    ("noun.communication", 1), ("noun.event", 1), ("noun.feeling", 1), ("noun.food", 1), ("noun.group", 1),
    ("noun.location", 1), ("noun.motive", 1), ("noun.object", 1), ("noun.person", 1), ("noun.phenomenon", 1),
    ("noun.plant", 1), ("noun.possession", 1), ("noun.process", 1), ("noun.quantity", 1), ("noun.relation", 1),
    ("noun.shape", 1), ("noun.state", 1), ("noun.substance", 1), ("noun.time", 1), ("verb.body", 2),
    ("verb.change", 2), ("verb.cognition", 2), ("verb.communication", 2), ("verb.competition", 2),
    ("verb.consumption", 2), ("verb.contact", 2), ("verb.creation", 2), ("verb.emotion", 2), ("verb.motion", 2),
    ("verb.perception", 2), ("verb.possession", 2), ("verb.social", 2), ("verb.stative", 2), ("verb.weather", 2),
    ("adj.ppl", 3),
)  # fmt: skip
PARTS = ("adj", "adv", "noun", "verb")
#: what NLTK's reader opens when it loads (``index.sense`` comes from ``wordnet-sense-index``)
REQUIRED_FILES = (
    tuple(f"{kind}.{part}" for kind in ("data", "index") for part in PARTS)
    + tuple(f"{part}.exc" for part in PARTS)
    + ("index.sense",)
)
#: what it opens for lemma counts only
OPTIONAL_FILES = ("cntlist.rev",)


class WordNetSetupError(ValueError):
    """The WordNet files are missing or NLTK cannot read the corpus built from them."""


def lexnames_text() -> str:
    """The ``lexnames`` file: ``NN<TAB>name<TAB>category`` per lexicographer file."""
    return "".join(f"{index:02d}\t{name}\t{category}\n" for index, (name, category) in enumerate(LEXNAMES))


def default_nltk_data_dir() -> Path:
    """Where NLTK looks first: the first folder of ``$NLTK_DATA``, else ``~/nltk_data`` (its download folder)."""
    configured = [part for part in os.environ.get("NLTK_DATA", "").split(os.pathsep) if part]
    return Path(configured[0]) if configured else Path.home() / "nltk_data"


def build_nltk_wordnet(source: str | Path = DEBIAN_WORDNET_DIR, data_dir: str | Path | None = None) -> Path:
    """Build NLTK's ``corpora/wordnet`` under ``data_dir`` from a WordNet 3.0 ``dict`` folder; returns its path.

    The files are copied (NLTK refuses a link), ``lexnames`` is written if the source lacks it, and the
    result is loaded with NLTK's reader before it replaces any earlier corpus there.
    """
    source = Path(source)
    if not source.is_dir():
        raise WordNetSetupError(
            f"{source} is not a folder: install Debian's WordNet (apt-get install {' '.join(DEBIAN_PACKAGES)}) "
            "or pass --source with a WordNet 3.0 dict folder"
        )
    missing = [name for name in REQUIRED_FILES if not (source / name).is_file()]
    if missing:
        raise WordNetSetupError(
            f"{source} lacks {', '.join(missing)}: expected a WordNet 3.0 dict folder such as Debian's "
            f"{DEBIAN_WORDNET_DIR} (apt-get install {' '.join(DEBIAN_PACKAGES)}; index.sense is in wordnet-sense-index)"
        )
    corpora = Path(data_dir if data_dir is not None else default_nltk_data_dir()) / "corpora"
    corpora.mkdir(parents=True, exist_ok=True)
    target = corpora / "wordnet"
    staging = Path(tempfile.mkdtemp(prefix=".wordnet-", dir=corpora))
    try:
        for name in REQUIRED_FILES + OPTIONAL_FILES + ("lexnames",):
            if (source / name).is_file():
                shutil.copyfile(source / name, staging / name)  # the file's content, never a link
        if not (staging / "lexnames").is_file():
            (staging / "lexnames").write_text(lexnames_text())
        for name in OPTIONAL_FILES:  # lemma counts only: an empty file keeps the reader working
            (staging / name).touch()
        staging.chmod(0o755)
        # NLTK reads its corpus by name (corpora/wordnet) while it loads: check it in place, keep the old one aside
        previous = corpora / f".wordnet-previous-{staging.name}"
        if target.is_symlink() or target.exists():
            target.rename(previous)
        staging.rename(target)
        try:
            check_corpus(target, corpora.parent)
        except WordNetSetupError:
            shutil.rmtree(target, ignore_errors=True)
            if previous.exists() or previous.is_symlink():
                previous.rename(target)
            raise
        if previous.is_symlink() or previous.is_file():
            previous.unlink()
        elif previous.is_dir():
            shutil.rmtree(previous)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def is_on_nltk_path(data_dir: str | Path) -> bool:
    """True when NLTK searches ``data_dir`` (``nltk.data.path``, which ``$NLTK_DATA`` extends)."""
    import nltk

    wanted = Path(data_dir).expanduser().resolve()
    return any(Path(str(entry)).expanduser().resolve() == wanted for entry in nltk.data.path)


def check_corpus(folder: Path, data_dir: Path) -> None:
    """Load ``folder`` (under ``data_dir``) with NLTK's WordNet reader; an error naming the cause if it cannot.

    NLTK reads corpora only under its data paths, so ``data_dir`` is one of them during the check.
    """
    import warnings

    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    added = not is_on_nltk_path(data_dir)
    if added:
        nltk.data.path.append(str(data_dir))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "multilingual functions are not available": not needed here
            WordNetCorpusReader(str(folder), None)
    except Exception as error:
        raise WordNetSetupError(
            f"NLTK cannot read the WordNet built from these files: {type(error).__name__}: {error}"
        ) from error
    finally:
        if added:
            nltk.data.path.remove(str(data_dir))
