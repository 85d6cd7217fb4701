"""Seeing inside: explain heat maps, attention rollout, and the trace command."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import FIXTURES, record
from PIL import Image
from seeded import ARCHS, seeded_images

import miniclip
from miniclip.apps.explain import attention_rollout, colorize, patch_similarity
from miniclip.cli import main


def test_rollout_of_identity_attention_is_uniform_over_nothing_but_itself():
    """With attention that only looks at itself, the class token draws on no patch."""
    L, H, T = 3, 2, 5
    eye = np.broadcast_to(np.eye(T), (L, H, T, T))
    assert np.allclose(attention_rollout(eye), 0.0)


def test_rollout_follows_attention_to_a_patch():
    """A class token that attends entirely to patch 2 in every layer draws most on patch 2."""
    L, H, T = 2, 1, 5  # 1 class token + 2 x 2 patches
    a = np.broadcast_to(np.eye(T), (L, H, T, T)).copy()
    a[:, :, 0] = 0.0
    a[:, :, 0, 3] = 1.0  # token 3 = patch index 2
    rollout = attention_rollout(a)
    assert rollout.shape == (2, 2) and rollout.argmax() == 2
    # by hand: each layer's row 0 is 0.5 e0 + 0.5 e3; twice: 0.25 e0 + 0.75 e3
    assert np.isclose(rollout.reshape(-1)[2], 0.75)


def test_patch_similarity_matches_projecting_patches_like_the_class_token(checkpoint):
    model, preprocess = miniclip.load(checkpoint("odd_oc"))
    pixels = preprocess(Image.new("RGB", (100, 90), (200, 30, 30)))
    text = model.encode_text(miniclip.tokenize(["a red square"], context_length=40))[0]
    _, hidden = model.encode_image(pixels[None], return_hidden=True)
    sim = patch_similarity(model, hidden, text)
    assert sim.shape == (5, 5) and np.all(np.abs(sim) <= 1 + 1e-6)
    # the class token through the same path gives the model's own image embedding
    v = model.params["visual"]
    cls = model.ops.layer_norm(hidden["hidden_states"][-1][0, :1], **v["ln_post"], eps=1e-5)
    np.testing.assert_allclose(model.ops.linear(cls, v["proj"].T)[0], model.encode_image(pixels[None])[0],
                               rtol=1e-5, atol=1e-6)


def reference_patch_similarity(name: str, params: dict, image: int, text: int) -> np.ndarray:  # -> [g, g]
    """Written apart from miniclip, in float64: the reference implementation's last hidden state (the last
    block's output, stored by tests/make_model_fixtures.py) for the patch tokens, through LayerNorm with the
    config's epsilon, ln_post's weights and the projection, cosine to the reference's text embedding."""
    ref, cfg = np.load(FIXTURES / f"model_{name}.npz"), ARCHS[name].config
    patches = ref["vision_hidden_states"][-1, image, 1:].astype(np.float64)  # [N, D]: class token excluded
    mean, var = patches.mean(-1, keepdims=True), patches.var(-1, keepdims=True)
    normed = (patches - mean) / np.sqrt(var + cfg.layer_norm_eps)
    normed = normed * params["visual.ln_post.weight"] + params["visual.ln_post.bias"]
    embedded = normed @ params["visual.proj"].astype(np.float64)  # [N, E]; proj is stored [D, E]
    t = ref["text_features"][text].astype(np.float64)
    similarity = embedded @ t / np.linalg.norm(embedded, axis=-1) / np.linalg.norm(t)
    return similarity.reshape(cfg.grid_size, cfg.grid_size)


@pytest.mark.parametrize("name", ["odd_hf", "odd_oc", "odd_eps"])
def test_patch_similarity_matches_an_independent_computation(name, checkpoint, params_cache):
    """Every patch's value, not just the shape: compared with the reference model's own last hidden state
    through ln_post and proj. (The LayerNorm epsilon only rescales each patch's row before ln_post's weight
    and small bias, which a cosine barely sees: odd_eps is here for coverage, not to catch a wrong epsilon.)"""
    model, _ = miniclip.load(checkpoint(name))
    ref = np.load(FIXTURES / f"model_{name}.npz")
    images = seeded_images(ARCHS[name])
    for image in range(len(images)):
        _, hidden = model.encode_image(images[image:image + 1], return_hidden=True)
        for text in range(len(ref["text_features"])):
            sim = patch_similarity(model, hidden, ref["text_features"][text])
            expected = reference_patch_similarity(name, params_cache(name), image, text)
            err = float(np.abs(sim - expected).max())
            record(f"{name} / explain patch similarity (abs)", err)
            # Cosines in [-1, 1]; the hidden states agree to ~1.5e-5 of values ~10 (float32 accumulation
            # order, test_model_fixtures), which moves a cosine by ~1e-6 (observed 9e-7). 1e-4 is far below
            # what the wrong tokens (class token in, last patch out: 0.3-0.5) or a skipped ln_post (0.05-0.09)
            # change.
            assert err < 1e-4, f"{name}, image {image}, text {text}: {err}"


def test_colorize_endpoints():
    c = colorize(np.array([[0.0, 1.0]]))
    assert c.shape == (1, 2, 3) and tuple(c[0, 0]) == (0, 0, 80) and tuple(c[0, 1]) == (255, 230, 60)


def test_explain_command_writes_a_three_panel_png(checkpoint, tmp_path, capsys):
    image = tmp_path / "in.png"
    Image.new("RGB", (120, 80), (20, 200, 20)).save(image)
    out = tmp_path / "explain.png"
    assert main(["explain", str(image), "--text", "a green square", "--out", str(out),
                 "--weights", str(checkpoint("odd_oc"))]) == 0
    panel = Image.open(out)
    assert panel.size == (3 * 80 + 20, 16 + 80 + 30)  # titles above, colour scales below
    assert "5x5 patch grid" in capsys.readouterr().out


def test_trace_prints_every_stage(checkpoint, tmp_path, capsys):
    image = tmp_path / "in.png"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(image)
    assert main(["trace", "--image", str(image), "--text", "a dog", "--weights", str(checkpoint("odd_oc"))]) == 0
    out = capsys.readouterr().out
    assert "# image encoder" in out and "# text encoder" in out
    assert "visual.conv1" in out and "[1, 25, 96]" in out and "text_projection" in out and "[1, 48]" in out
    assert main(["trace", "--weights", str(checkpoint("odd_oc"))]) == 1
