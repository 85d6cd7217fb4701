"""The `miniclip` command end to end on seeded weights."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import miniclip
from miniclip.cli import main

CLIP_PNG = Path(__file__).resolve().parent / "data" / "CLIP.png"


@pytest.fixture
def images(tmp_path):
    paths = []
    for i, color in enumerate([(250, 20, 20), (20, 250, 20), (20, 20, 250)]):
        path = tmp_path / f"img{i}.png"
        Image.new("RGB", (120 + 10 * i, 90), color).save(path)
        paths.append(str(path))
    return paths


def test_classify_prints_a_ranked_table_that_matches_the_api(checkpoint, images, capsys):
    weights = checkpoint("odd_oc")
    labels = ["a red square", "a green square", "a blue square"]
    assert main(["classify", *images, "--labels", *labels, "--weights", str(weights), "--batch-size", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == images[0] and out[4] == images[1] and len(out) == 12

    model, preprocess = miniclip.load(weights)
    pixels = np.stack([preprocess(Image.open(p)) for p in images])
    logits, _ = model(pixels, miniclip.tokenize(labels, context_length=model.config.context_length))
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    for i in range(3):
        rows = out[4 * i + 1: 4 * i + 4]
        best = labels[int(probs[i].argmax())]
        assert rows[0].split("  ")[1].strip() == best
        shown = [float(r.rsplit(None, 1)[1].rstrip("%")) / 100 for r in rows]
        assert shown == sorted(shown, reverse=True)
        np.testing.assert_allclose(sorted(shown, reverse=True), sorted(probs[i], reverse=True), atol=1e-4)


def test_classify_top_k(checkpoint, images, capsys):
    assert main(["classify", images[0], "--labels", "a", "b", "c", "--top", "1",
                 "--weights", str(checkpoint("odd_oc"))]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2


def test_embed_images_and_texts(checkpoint, images, tmp_path):
    weights = checkpoint("odd_oc")
    model, preprocess = miniclip.load(weights)
    out = tmp_path / "img.npy"
    assert main(["embed", "--images", *images, "--out", str(out), "--weights", str(weights)]) == 0
    expected = model.encode_image(np.stack([preprocess(Image.open(p)) for p in images]))
    np.testing.assert_allclose(np.load(out), expected, rtol=1e-5, atol=1e-6)

    out = tmp_path / "txt.npy"
    assert main(["embed", "--texts", "a dog", "a cat", "--normalize", "--out", str(out),
                 "--weights", str(weights)]) == 0
    text = np.load(out)
    assert text.shape == (2, 48)
    np.testing.assert_allclose(np.linalg.norm(text, axis=-1), 1.0, rtol=1e-5)


def test_no_weights_is_a_helpful_error(images, capsys, monkeypatch):
    monkeypatch.delenv("MINICLIP_WEIGHTS", raising=False)
    assert main(["classify", images[0], "--labels", "a dog"]) == 1
    err = capsys.readouterr().err
    assert "no weights given" in err and "--weights" in err and "MINICLIP_WEIGHTS" in err


def test_weights_from_environment(checkpoint, images, capsys, monkeypatch):
    monkeypatch.setenv("MINICLIP_WEIGHTS", str(checkpoint("odd_oc")))
    from miniclip import cli
    assert cli.main(["classify", images[0], "--labels", "a dog", "a cat"]) == 0


def test_bad_image_and_bad_weights_are_reported_not_raised(checkpoint, tmp_path, capsys):
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"definitely not a jpeg")
    assert main(["classify", str(junk), "--labels", "a dog", "--weights", str(checkpoint("odd_oc"))]) == 1
    assert "junk.jpg" in capsys.readouterr().err
    assert main(["classify", str(junk), "--labels", "a dog", "--weights", str(junk)]) == 1
    assert "error" in capsys.readouterr().err


def test_bare_weights_warning_is_one_clean_line(checkpoint, images, capsys):
    bare = checkpoint("odd_oc", with_config=False)
    assert main(["classify", images[0], "--labels", "a", "--weights", str(bare)]) == 0
    err = capsys.readouterr().err
    assert err.startswith("miniclip: warning: no open_clip_config.json") and err.count("\n") == 1


def test_python_dash_m_entry_point(checkpoint):
    result = subprocess.run([sys.executable, "-m", "miniclip", "classify", str(CLIP_PNG), "--labels", "a diagram",
                             "a dog", "--weights", str(checkpoint("odd_oc"))], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(str(CLIP_PNG)) and "a diagram" in result.stdout
