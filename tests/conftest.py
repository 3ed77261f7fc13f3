"""Shared fixtures: tiny randomly initialised DistilBERT and BERT models, and small test maps."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
)

from qra.featuremaps import FeatureMap

HEAD_DIM = 8
HEADS = 4
LAYERS = 6


class ScaledIdentity(FeatureMap):
    """φ(x) = x / d^(1/4): its dot product is q·k/√d, so softmax-mode kernel attention is standard attention."""

    @property
    def dim(self) -> int:
        return self.d_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / math.sqrt(math.sqrt(self.d_in))


class GaussianKernelMap(FeatureMap):
    """Exact RBF kernel through similarity (not a dot product): a map that cannot run in linear mode."""

    is_linear = False

    def __init__(self, d_in: int, sigma: float = 1.0) -> None:
        super().__init__(d_in)
        self.sigma = sigma

    @property
    def dim(self) -> int:
        return self.d_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def similarity(self, fx: torch.Tensor, fy: torch.Tensor) -> torch.Tensor:
        return torch.exp(-torch.cdist(fx, fy).square() / (2 * self.sigma**2))


def tiny_bert(attn_implementation: str = "sdpa", seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=120,
        hidden_size=HEADS * HEAD_DIM,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=48,
        max_position_embeddings=64,
        num_labels=2,
        attn_implementation=attn_implementation,
    )
    return BertForSequenceClassification(config).eval()


def tiny_distilbert(attn_implementation: str = "sdpa", seed: int = 0) -> DistilBertForSequenceClassification:
    torch.manual_seed(seed)
    config = DistilBertConfig(
        vocab_size=120,
        dim=HEADS * HEAD_DIM,
        n_layers=LAYERS,
        n_heads=HEADS,
        hidden_dim=48,
        max_position_embeddings=64,
        num_labels=2,
        attn_implementation=attn_implementation,
    )
    return DistilBertForSequenceClassification(config).eval()


MODEL_FACTORIES = {"bert": tiny_bert, "distilbert": tiny_distilbert}


@pytest.fixture(params=sorted(MODEL_FACTORIES))
def model_factory(request):
    return MODEL_FACTORIES[request.param]


@pytest.fixture
def padded_batch() -> dict[str, torch.Tensor]:
    """Two sequences: one of 14 tokens, one of 9 tokens padded to 14."""
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(5, 120, (2, 14), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 9:] = 0
    input_ids[1, 9:] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask}


POSITIVE_WORDS = ["great", "wonderful", "loved", "brilliant", "moving", "superb", "fun", "charming"]
NEGATIVE_WORDS = ["awful", "boring", "hated", "dull", "terrible", "weak", "slow", "waste"]
FILLER_WORDS = ["the", "movie", "film", "was", "a", "and", "plot", "acting", "story", "it", "this", "i", "actors"]


def two_batches(padded_batch: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """The padded batch and a seeded unpadded one: the inputs of the warm-ups' calibration tests."""
    generator = torch.Generator().manual_seed(3)
    other = {"input_ids": torch.randint(5, 120, (3, 12), generator=generator),
             "attention_mask": torch.ones(3, 12, dtype=torch.long)}  # fmt: skip
    return [padded_batch, other]


def synthetic_reviews(count: int, seed: int) -> list[dict]:
    """Reviews whose label is carried by sentiment words: learnable, and free of any real data."""
    import random

    rng = random.Random(seed)
    rows = []
    for index in range(count):
        label = index % 2
        sentiment = POSITIVE_WORDS if label else NEGATIVE_WORDS
        words = [rng.choice(FILLER_WORDS) for _ in range(rng.randint(8, 30))]
        for _ in range(3):
            words.insert(rng.randrange(len(words)), rng.choice(sentiment))
        rows.append({"text": " ".join(words).capitalize() + ".", "label": label, "id": index})
    return rows


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory):
    """train.jsonl.gz (48 reviews) and test.jsonl (24 reviews), like ../shared/data/imdb."""
    import gzip
    import json

    directory = tmp_path_factory.mktemp("data")
    with gzip.open(directory / "train.jsonl.gz", "wt") as stream:
        stream.writelines(json.dumps(row) + "\n" for row in synthetic_reviews(48, seed=0))
    (directory / "test.jsonl").write_text("".join(json.dumps(row) + "\n" for row in synthetic_reviews(24, seed=1)))
    return directory


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A random 6-layer DistilBERT (head dim 8) with a word-level vocabulary covering the synthetic reviews."""
    directory = tmp_path_factory.mktemp("model")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", *POSITIVE_WORDS, *NEGATIVE_WORDS, *FILLER_WORDS]
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    torch.manual_seed(0)
    config = DistilBertConfig(vocab_size=len(vocab), dim=HEADS * HEAD_DIM, n_layers=LAYERS, n_heads=HEADS,
                              hidden_dim=48, max_position_embeddings=128, num_labels=2)  # fmt: skip
    DistilBertForSequenceClassification(config).save_pretrained(directory)
    return directory
