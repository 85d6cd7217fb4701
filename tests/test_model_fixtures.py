"""miniclip against the PyTorch references (transformers CLIPModel, open_clip CLIP), through the public API.

The fixtures were made by tests/make_model_fixtures.py from the same seeded weights, written in the same
layout; tolerances are the issue's: embeddings within 1e-4 of their norm, logits within 1e-3.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import FIXTURES, record
from seeded import ARCHS, TEXTS, fingerprint, seeded_images
from test_cuda_ops import backend_params

import miniclip

# Observed worst cases (printed at the end of every run): embeddings 3.5e-6 of their norm, logits 5e-5 (logits
# are cosines times 100). Both are float32 accumulation-order noise: BLAS, the Numba GEMM and PyTorch sum the
# same products in different orders, and the differences compound over 12 layers; another CPU (AVX-512 vs
# AVX2 kernels) or BLAS build can give several times more. The tolerances leave ~20-30x for that and stay
# ~10x below the smallest real mistake planted so far (one LayerNorm ignoring the config's epsilon in odd_eps:
# 1.1e-3 of the norm).
EMBED_RTOL = 1e-4
LOGIT_ATOL = 1e-3


def fixture(name: str):
    return np.load(FIXTURES / f"model_{name}.npz")


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:  # worst row: |a - e| / |e|
    return float((np.linalg.norm(actual - expected, axis=-1) / np.linalg.norm(expected, axis=-1)).max())


def check_against_fixture(model, name: str, label: str) -> None:
    ref = fixture(name)
    arch = ARCHS[name]
    images, tokens = seeded_images(arch), ref["tokens"].astype(np.int64)
    image_features, text_features = model.encode_image(images), model.encode_text(tokens)
    logits_per_image, logits_per_text = model(images, tokens)
    assert image_features.dtype == np.float32 and image_features.shape == (len(images), arch.config.embed_dim)
    assert text_features.shape == (len(TEXTS), arch.config.embed_dim)
    errors = {
        "image_features (rel)": relative_error(image_features, ref["image_features"]),
        "text_features (rel)": relative_error(text_features, ref["text_features"]),
        "logits_per_image (abs)": float(np.abs(logits_per_image - ref["logits_per_image"]).max()),
        "logits_per_text (abs)": float(np.abs(logits_per_text - ref["logits_per_text"]).max()),
    }
    for quantity, value in errors.items():
        record(f"{label} / {quantity}", value)
        limit = EMBED_RTOL if "features" in quantity else LOGIT_ATOL
        assert value <= limit, f"{label}: {quantity} = {value:.3g} exceeds {limit}"


@pytest.mark.parametrize("name", list(ARCHS))
def test_seeded_weights_are_the_fixtures_weights(name, params_cache):
    """If NumPy's legacy generator ever changed, every comparison below would be meaningless."""
    np.testing.assert_allclose(fingerprint(params_cache(name)), fixture(name)["fingerprint"], rtol=1e-6)


@pytest.mark.parametrize("name", list(ARCHS))
def test_tokenize_gives_the_reference_tokens(name):
    ref = fixture(name)
    tokens = miniclip.tokenize(TEXTS, context_length=ARCHS[name].config.context_length)
    np.testing.assert_array_equal(tokens, ref["tokens"])


@pytest.mark.parametrize("backend", backend_params())  # "cupy" needs a GPU
@pytest.mark.parametrize("name", list(ARCHS))
def test_matches_reference_in_its_own_layout(name, backend, checkpoint):
    """Each architecture loaded from the layout its reference read, with that layout's config file."""
    model, preprocess = miniclip.load(checkpoint(name), backend=backend)
    assert model.config == ARCHS[name].config
    check_against_fixture(model, name, f"{name} ({ARCHS[name].layout}, {backend})")


@pytest.mark.parametrize("name", list(ARCHS))
def test_matches_reference_from_the_other_layout_without_config(name, checkpoint):
    """The same weights in the other layout, as a bare .safetensors file: the architecture comes from the
    tensor shapes, the activation from the keyword, and the outputs must not change."""
    arch = ARCHS[name]
    other = "open_clip" if arch.layout == "transformers" else "transformers"
    file = next(checkpoint(name, other, with_config=False).glob("*.safetensors"))
    model, _ = miniclip.load(file, activation=arch.config.activation)
    inferred = model.config
    # heads cannot be told from shapes: 64-wide heads are assumed, as in every published CLIP
    assert inferred.vision_width == arch.config.vision_width and inferred.image_size == arch.config.image_size
    if arch.config.vision_width % 64 == 0 and arch.config.text_width % 64 == 0:
        assert inferred == arch.config
        check_against_fixture(model, name, f"{name} ({other}, bare file)")
    else:
        assert inferred.vision_heads == max(1, arch.config.vision_width // 64)


# Per-layer activations are stored for the small models (tests/make_model_fixtures.py): transformers' own
# hidden_states / attentions for the transformers-layout ones, open_clip's (recorded by hooks) for odd_oc.
HIDDEN_ARCHS = [name for name in ARCHS if ARCHS[name].config.vision_width <= 256]
# Hidden states reach |x| ~ 10 (the residual stream grows with depth); the worst observed difference is
# ~1.5e-5 there, i.e. float32 accumulation-order noise (about 1e-6 of the values) compounded over the blocks.
# 1e-4 leaves ~7x headroom for other BLAS builds while staying far below any real mistake (>= 1e-2).
HIDDEN_ATOL = 1e-4


@pytest.mark.parametrize("backend", backend_params())  # "cupy" needs a GPU
@pytest.mark.parametrize("name", HIDDEN_ARCHS)
def test_hidden_states_and_attentions_match_the_reference(name, checkpoint, backend):
    """Frozen reference activations at every stage (llm.c style), through return_hidden=True: the input of
    every block and the last block's output (transformers' `hidden_states`), and every layer's attention
    probabilities (`attentions`), for both towers of the small models (QuickGELU from transformers, exact
    GELU from open_clip, a non-default LayerNorm epsilon), with every backend."""
    ref = fixture(name)
    model, _ = miniclip.load(checkpoint(name), backend=backend)
    images, tokens = seeded_images(ARCHS[name]), ref["tokens"].astype(np.int64)
    for tower, (features, hidden) in (("vision", model.encode_image(images, return_hidden=True)),
                                      ("text", model.encode_text(tokens, return_hidden=True))):
        for quantity in ("hidden_states", "attentions"):
            expected = ref[f"{tower}_{quantity}"]
            assert hidden[quantity].shape == expected.shape
            err = float(np.abs(hidden[quantity] - expected).max())
            record(f"{name} / {tower} {quantity} (abs, {backend})", err)
            assert err < HIDDEN_ATOL, f"{tower} {quantity}: {err}"
        plain = model.encode_image(images) if tower == "vision" else model.encode_text(tokens)
        np.testing.assert_allclose(features, plain, rtol=1e-5, atol=1e-6)  # recording changes nothing


def test_recorded_steps_name_every_stage(checkpoint):
    model, _ = miniclip.load(checkpoint("odd_oc"))
    _, hidden = model.encode_image(seeded_images(ARCHS["odd_oc"])[:1], return_hidden=True)
    names = [name for name, _ in hidden["steps"]]
    assert names[:5] == ["visual.patchify", "visual.conv1", "visual.class_embedding",
                         "visual.positional_embedding", "visual.ln_pre"]
    assert names[-2:] == ["visual.ln_post", "visual.proj"]
    assert "visual.transformer.resblocks.2.attn.probs" in names
    shapes = dict(hidden["steps"])
    assert shapes["visual.conv1"].shape == (1, 25, 96) and shapes["visual.proj"].shape == (1, 48)


@pytest.mark.parametrize("name", HIDDEN_ARCHS)
def test_attention_probabilities_are_far_from_uniform(name):
    """The fixtures are only a good test of masking and pooling if attention actually picks tokens."""
    ref = fixture(name)
    probs = ref["vision_attentions"]
    assert probs.max() > 0.5, "seeded weights give near-uniform attention: make q/k larger"
    text = ref["text_attentions"]
    upper = np.triu(np.ones(text.shape[-2:], dtype=bool), k=1)
    assert np.all(text[..., upper] == 0), "reference text attention is not causal?"
