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
