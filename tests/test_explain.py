"""Seeing inside: explain heat maps, attention rollout, and the trace command."""

from __future__ import annotations

import numpy as np
from PIL import Image

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
