"""Patching DistilBERT and BERT: only the chosen layers change, padding is honoured, saves reload."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import GPT2Config, GPT2Model

import qra
from qra import featuremaps
from qra.featuremaps import get

from .conftest import HEAD_DIM, HEADS, LAYERS, GaussianKernelMap, ScaledIdentity, tiny_bert, tiny_distilbert

MODES = ("softmax", "normalized", "linear")


def layer_modules(model):
    base = model.bert.encoder.layer if hasattr(model, "bert") else model.distilbert.transformer.layer
    return list(base)


def record_layers(model, batch):
    """Each layer's (input hidden states, mask, output) during one forward pass."""
    records = []

    def hook(module, args, kwargs, output):
        hidden = args[0]
        mask = args[1] if len(args) > 1 else kwargs.get("attention_mask")
        records.append((hidden.detach().clone(), mask, output[0] if isinstance(output, tuple) else output))

    handles = [layer.register_forward_hook(hook, with_kwargs=True) for layer in layer_modules(model)]
    with torch.no_grad():
        logits = model(**batch).logits
    for handle in handles:
        handle.remove()
    return records, logits


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_unpatched_layers_stay_bit_identical(model_factory, padded_batch, mode, implementation):
    original = model_factory(implementation)
    patched = qra.patch(copy.deepcopy(original), get("rff", d_in=HEAD_DIM, m=32, sigma=2.0), layers=(2, 4), mode=mode)
    records, _ = record_layers(patched, padded_batch)
    reference_layers = layer_modules(original)
    with torch.no_grad():
        for index, (hidden, mask, output) in enumerate(records):
            unpatched_output = reference_layers[index](hidden, mask)
            unpatched_output = unpatched_output[0] if isinstance(unpatched_output, tuple) else unpatched_output
            if index in (2, 4):
                assert not torch.allclose(output, unpatched_output)
            else:
                assert torch.equal(output, unpatched_output), f"layer {index} changed"


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_a_kernel_equal_to_dot_product_attention_reproduces_the_model(model_factory, padded_batch, implementation):
    # φ(x) = x / d^(1/4) makes softmax(β·S) with β = 1 the model's own softmax(q·k/√d):
    # the patched model must then give the unpatched logits, through every layer.
    model = model_factory(implementation)
    with torch.no_grad():
        expected = model(**padded_batch).logits
    qra.patch(model, ScaledIdentity(HEAD_DIM), layers=range(LAYERS))
    with torch.no_grad():
        torch.testing.assert_close(model(**padded_batch).logits, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("featuremap", "mode"),
    [("rff", mode) for mode in MODES] + [("performer", mode) for mode in MODES],
)
def test_padding_does_not_change_the_logits(model_factory, padded_batch, featuremap, mode):
    model = qra.patch(model_factory(), featuremap, featuremap_params={"m": 32}, layers=(4, 5), mode=mode)
    with torch.no_grad():
        batched = model(**padded_batch).logits
        alone = model(input_ids=padded_batch["input_ids"][1:, :9]).logits
    torch.testing.assert_close(batched[1:], alone, rtol=1e-5, atol=1e-6)


def test_gradients_reach_the_patched_layers_projections_and_knobs(padded_batch):
    model = qra.patch(tiny_bert(), get("rff", d_in=HEAD_DIM, m=32, learn_sigma=True), layers=(4, 5), learn_beta=True)
    model.train()
    loss = model(**padded_batch, labels=torch.tensor([0, 1])).loss
    loss.backward()
    for index in (4, 5):
        attention = model.bert.encoder.layer[index].attention.self
        for parameter in (
            attention.query.weight,
            attention.key.weight,
            attention.qra_attention.beta,
            attention.qra_attention.featuremap.log_sigma,
        ):
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0


WORKING_MAPS = sorted(name for name, info in featuremaps.available().items() if info.status == "ok")


@pytest.mark.parametrize("featuremap", WORKING_MAPS)
def test_every_trainable_parameter_gets_a_gradient(model_factory, padded_batch, featuremap):
    """qra train runs DDP with ``find_unused_parameters=False``: a parameter without a gradient would hang it."""
    model = qra.patch(model_factory(), featuremap, layers=(4, 5), learn_beta=True)
    model.train()
    model(**padded_batch, labels=torch.tensor([0, 1])).loss.backward()
    trainable = dict(model.named_parameters())
    assert not [name for name, parameter in trainable.items() if parameter.requires_grad and parameter.grad is None]


@pytest.mark.parametrize("mode", MODES)
def test_save_and_load_patched_round_trip(model_factory, padded_batch, tmp_path, mode):
    model = qra.patch(model_factory(), get("rff", d_in=HEAD_DIM, m=32, seed=5, learn_sigma=True), mode=mode)
    with torch.no_grad():  # as if training had moved the learned knobs
        for module in model.modules():
            if isinstance(module, qra.KernelAttention):
                module.featuremap.log_sigma.add_(0.25)
        expected = model(**padded_batch).logits
    model.save_pretrained(tmp_path)
    reloaded = qra.load_patched(tmp_path).eval()
    assert reloaded.config.qra == model.config.qra
    assert reloaded.config.qra["featuremap"] == "rff"
    saved_state, reloaded_state = model.state_dict(), reloaded.state_dict()
    assert saved_state.keys() == reloaded_state.keys()
    assert all(torch.equal(saved_state[key], reloaded_state[key]) for key in saved_state)
    with torch.no_grad():
        # Same parameters bit for bit; logits may differ in the last bit because CPU kernels pick
        # vectorised paths by memory alignment (plain transformers round trips show ~1e-9 too).
        torch.testing.assert_close(reloaded(**padded_batch).logits, expected, rtol=1e-6, atol=1e-7)


def test_plain_from_pretrained_of_a_patched_save_refuses_to_run_stock_attention(padded_batch, tmp_path):
    """A patched save loaded without qra.load_patched would run stock attention in every layer: it must say so."""
    from transformers import AutoModelForSequenceClassification

    qra.patch(tiny_bert(), "rff").save_pretrained(tmp_path)
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert not qra.is_patched(plain)  # the config has the qra entry, the modules have no kernel attention
    with torch.no_grad(), pytest.raises(RuntimeError, match=r"qra\.load_patched"):
        plain(**padded_batch)
    reloaded = qra.load_patched(tmp_path)
    assert qra.is_patched(reloaded)
    with torch.no_grad():
        reloaded(**padded_batch)  # the same folder through load_patched runs


def test_explicit_qra_implementation_on_an_unpatched_model_is_refused(padded_batch, tmp_path):
    from transformers import AutoModelForSequenceClassification

    tiny_bert().save_pretrained(tmp_path)
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path, attn_implementation="qra_sdpa").eval()
    with torch.no_grad(), pytest.raises(RuntimeError, match=r"was not patched: call qra\.patch"):
        model(**padded_batch)


def test_unpatch_leaves_a_model_that_saves_and_loads_plainly(padded_batch, tmp_path):
    from transformers import AutoModelForSequenceClassification

    original = tiny_bert()
    with torch.no_grad():
        expected = original(**padded_batch).logits
    qra.unpatch(qra.patch(original, "rff")).save_pretrained(tmp_path)
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert plain.config._attn_implementation == "sdpa"
    with torch.no_grad():
        torch.testing.assert_close(plain(**padded_batch).logits, expected)


def test_load_patched_builds_unregistered_maps_only_with_trust_remote_code(padded_batch, tmp_path):
    import json

    model = qra.patch(tiny_bert(), ScaledIdentity(HEAD_DIM), layers=(5,))
    assert model.config.qra["featuremap"] == "tests.conftest:ScaledIdentity"  # not registered: an import path
    model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        qra.load_patched(tmp_path)
    reloaded = qra.load_patched(tmp_path, trust_remote_code=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**padded_batch).logits, model.eval()(**padded_batch).logits)
    config = json.loads((tmp_path / "config.json").read_text())
    config["qra"]["featuremap"] = "os:system"  # what a hostile folder would write
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="import path 'os:system'"):
        qra.load_patched(tmp_path)


def test_unpatch_restores_the_original_model(model_factory, padded_batch):
    model = model_factory()
    with torch.no_grad():
        expected = model(**padded_batch).logits
    qra.patch(model, "rff", layers=(0, 5))
    assert qra.is_patched(model)
    model.config.qra = None  # is_patched looks at the modules, not at the config
    assert qra.is_patched(model)
    qra.unpatch(model)
    assert not qra.is_patched(model)
    assert model.config._attn_implementation == "sdpa"
    assert not any(isinstance(module, qra.KernelAttention) for module in model.modules())
    with torch.no_grad():
        assert torch.equal(model(**padded_batch).logits, expected)


def test_patching_again_replaces_the_previous_patch():
    model = qra.patch(tiny_distilbert(), "rff", layers=(1,))
    qra.patch(model, "performer", layers=(3, 4), mode="linear")
    kernels = [name for name, module in model.named_modules() if isinstance(module, qra.KernelAttention)]
    assert [name.split(".")[3] for name in kernels] == ["3", "4"]
    assert model.config.qra["featuremap"] == "performer"


def test_attention_maps_of_patched_layers_on_request(padded_batch):
    model = qra.patch(tiny_bert(), "rff", layers=(4, 5), mode="linear")
    with torch.no_grad():
        attentions = model(**padded_batch, output_attentions=True).attentions
    assert len(attentions) == 2  # sdpa layers return none; the two patched layers return theirs
    for weights in attentions:
        assert weights.shape == (2, HEADS, 14, 14)
        assert torch.all(weights[1, :, :, 9:] == 0)
        torch.testing.assert_close(weights.sum(-1), torch.ones(2, HEADS, 14))


def test_errors_say_what_is_accepted():
    with pytest.raises(ValueError, match="the model has 6 layers"):
        qra.patch(tiny_bert(), "rff", layers=(4, 6))
    with pytest.raises(ValueError, match=r"head dimension 8"):
        qra.patch(tiny_bert(), get("rff", d_in=64))
    with pytest.raises(ValueError, match="supported: bert, distilbert"):
        qra.patch(GPT2Model(GPT2Config(n_layer=2, n_embd=32, n_head=4)), "rff")
    with pytest.raises(ValueError, match="is_linear"):
        qra.patch(tiny_bert(), GaussianKernelMap(HEAD_DIM), mode="linear")
    with pytest.raises(ValueError, match="accepted: softmax, normalized, linear"):
        qra.patch(tiny_bert(), "rff", mode="quadratic")
    with pytest.raises(TypeError, match="accepted: m, sigma"):
        qra.patch(tiny_bert(), "rff", featuremap_params={"M": 4})


def test_load_patched_rejects_an_unpatched_directory(tmp_path):
    tiny_bert().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="no qra settings"):
        qra.load_patched(tmp_path)


def test_only_key_padding_masks_are_accepted_and_the_first_is_checked_on_the_host():
    """A mask whose rows differ (causal, say) is refused with a message on every CPU call; a module records that its
    first mask passed, after which CUDA masks are checked on the device without a host sync."""
    from torch import nn

    from qra.patching import MASK_CHECKED_ATTRIBUTE, _key_padding_mask

    module = nn.Identity()
    keep = torch.tensor([[True, True, True, False], [True, True, True, True]])
    padding = keep[:, None, None, :].expand(2, 1, 4, 4)
    additive = torch.zeros(2, 1, 4, 4).masked_fill(~padding, torch.finfo(torch.float32).min)
    causal = torch.ones(4, 4, dtype=torch.bool).tril().expand(2, 1, 4, 4)
    with pytest.raises(ValueError, match="key-padding masks only"):
        _key_padding_mask(causal, module)
    assert not getattr(module, MASK_CHECKED_ATTRIBUTE, False)
    assert torch.equal(_key_padding_mask(padding, module), keep)
    assert getattr(module, MASK_CHECKED_ATTRIBUTE)
    assert torch.equal(_key_padding_mask(additive, module), keep)
    with pytest.raises(ValueError, match="key-padding masks only"):  # still refused on the CPU once checked
        _key_padding_mask(causal, module)
    assert _key_padding_mask(None, module) is None
