"""Zero-shot classification with prompt ensembling (miniclip/zeroshot.py and `miniclip classify --templates`),
end to end on seeded weights."""

from __future__ import annotations

import types

import numpy as np
import pytest
from PIL import Image

import miniclip
from miniclip.apps.zeroshot import (
    cache_dir,
    classify,
    imagenet_classes,
    imagenet_templates,
    load_templates,
    model_fingerprint,
    zero_shot_classifier,
)
from miniclip.cli import main
from miniclip.model import CLIP
from miniclip.weights import load_weights

CLASSES = ["red", "green", "blue"]
TEMPLATES = ["a photo of a {} square.", "a {} thing", "{}", "a blurry picture of something {}, with {} in it."]


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Never write into the real ~/.cache during tests."""
    monkeypatch.setenv("MINICLIP_HOME", str(tmp_path / "home"))


@pytest.fixture(scope="module")
def model(checkpoint):
    return miniclip.load(checkpoint("odd_oc"))


@pytest.fixture
def images(tmp_path):
    paths = []
    for i, color in enumerate([(250, 20, 20), (20, 250, 20), (20, 20, 250)]):
        path = tmp_path / f"img{i}.png"
        Image.new("RGB", (100 + 10 * i, 90), color).save(path)
        paths.append(str(path))
    return paths


def direct_weights(clip, classnames, templates):
    """The paper's recipe written out the slow, obvious way: one class and one prompt at a time."""
    columns = []
    for name in classnames:
        embeddings = []
        for t in templates:
            e = clip.encode_text(miniclip.tokenize([t.replace("{}", name)], clip.config.context_length))[0]
            embeddings.append(e / np.linalg.norm(e))
        mean = np.mean(embeddings, axis=0)
        columns.append(mean / np.linalg.norm(mean))
    return np.stack(columns, axis=1)


def test_ensemble_weights_match_a_direct_computation(model):
    clip, _ = model
    # batch_size=3 makes batches straddle class boundaries, which the per-class averaging must undo
    weights = zero_shot_classifier(clip, CLASSES, TEMPLATES, batch_size=3, cache=False)
    assert weights.shape == (48, 3) and weights.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(weights, axis=0), 1.0, rtol=1e-6)
    np.testing.assert_allclose(weights, direct_weights(clip, CLASSES, TEMPLATES), atol=2e-6)
    # The ensemble differs from any single template (else this test could not tell them apart).
    single = zero_shot_classifier(clip, CLASSES, TEMPLATES[:1], cache=False)
    assert np.abs(single - weights).max() > 1e-2


def test_no_templates_means_verbatim_labels(model):
    clip, _ = model
    labels = ["a red square", "a green square"]
    expected = clip.encode_text(miniclip.tokenize(labels, clip.config.context_length))
    expected /= np.linalg.norm(expected, axis=-1, keepdims=True)
    np.testing.assert_allclose(zero_shot_classifier(clip, labels, None, cache=False), expected.T, atol=1e-6)


def test_classify_cli_with_a_templates_file_matches_the_api(model, images, tmp_path, checkpoint, capsys):
    clip, preprocess = model
    file = tmp_path / "templates.txt"
    file.write_text("# my templates\n" + "\n".join(TEMPLATES) + "\n\n")
    assert load_templates(str(file)) == TEMPLATES
    assert main(["classify", *images, "--labels", *CLASSES, "--templates", str(file),
                 "--weights", str(checkpoint("odd_oc"))]) == 0
    out = capsys.readouterr().out.splitlines()

    weights = direct_weights(clip, CLASSES, TEMPLATES)
    pixels = np.stack([preprocess(Image.open(p)) for p in images])
    probs = classify(clip, pixels, weights)
    logits = 100.0 * (clip.encode_image(pixels) / np.linalg.norm(clip.encode_image(pixels), axis=-1,
                                                                  keepdims=True)) @ weights
    expected = np.exp(logits - logits.max(-1, keepdims=True))
    np.testing.assert_allclose(probs, expected / expected.sum(-1, keepdims=True), atol=1e-6)
    for i, path in enumerate(images):
        block = out[4 * i: 4 * i + 4]
        assert block[0] == path
        shown = {line.split()[0]: float(line.split()[1].rstrip("%")) / 100 for line in block[1:]}
        assert list(shown) == [CLASSES[k] for k in np.argsort(-probs[i], kind="stable")]
        np.testing.assert_allclose([shown[c] for c in CLASSES], probs[i], atol=1e-4)


def test_builtin_templates_and_classes():
    templates = load_templates("imagenet")
    assert templates == imagenet_templates() and len(templates) == 80
    assert all(t.count("{}") == 1 for t in templates)
    assert "a photo of a {}." in templates and "itap of a {}." in templates
    assert load_templates("simple") == ["a photo of a {}."]
    assert load_templates(None) is None
    classes = imagenet_classes()
    assert len(classes) == 1000 and classes[0] == "tench" and classes[-1] == "toilet paper"


def test_bad_templates_are_clear_errors(tmp_path, images, checkpoint, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_text("a photo of a {}.\na photo without a placeholder\n")
    with pytest.raises(miniclip.MiniclipError, match=r"bad.txt, line 2: .*no \{\}"):
        load_templates(str(bad))
    with pytest.raises(miniclip.MiniclipError, match="neither 'imagenet', 'simple' nor an existing file"):
        load_templates("imagenett")
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n")
    with pytest.raises(miniclip.MiniclipError, match="no templates found"):
        load_templates(str(empty))
    assert main(["classify", images[0], "--labels", "a", "--templates", str(bad),
                 "--weights", str(checkpoint("odd_oc"))]) == 1
    assert "line 2" in capsys.readouterr().err
    assert main(["classify", images[0], "--labels", "a", "--imagenet", "--weights", str(checkpoint("odd_oc"))]) == 1
    assert "one of --labels, --labels-file or --imagenet, not --labels and --imagenet" in capsys.readouterr().err


def test_imagenet_labels_show_top_5(images, checkpoint, capsys):
    assert main(["classify", images[0], "--imagenet", "--weights", str(checkpoint("odd_oc"))]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == images[0] and len(out) == 6
    names = set(imagenet_classes())
    assert all(line.strip().rsplit(None, 1)[0] in names for line in out[1:])


def test_class_weights_are_cached_by_model_and_prompts(model, monkeypatch, tmp_path):
    clip, _ = model
    first = zero_shot_classifier(clip, CLASSES, TEMPLATES)
    files = list((cache_dir() / "zeroshot").glob("zeroshot-*.npy"))
    assert cache_dir() == tmp_path / "home" / "cache" and len(files) == 1

    calls = []
    original = clip.encode_text
    monkeypatch.setattr(clip, "encode_text", lambda tokens: calls.append(len(tokens)) or original(tokens))
    np.testing.assert_array_equal(zero_shot_classifier(clip, CLASSES, TEMPLATES), first)
    assert calls == []  # served from the cache
    zero_shot_classifier(clip, CLASSES, TEMPLATES[:2])  # other prompts: another entry
    assert calls and len(list((cache_dir() / "zeroshot").glob("zeroshot-*.npy"))) == 2

    files[0].write_bytes(b"garbage")  # a damaged entry is recomputed, not trusted
    calls.clear()
    np.testing.assert_allclose(zero_shot_classifier(clip, CLASSES, TEMPLATES), first, atol=1e-6)
    assert calls
    np.testing.assert_allclose(np.load(files[0]), first, atol=1e-6)

    other = tmp_path / "elsewhere"
    zero_shot_classifier(clip, CLASSES, TEMPLATES, cache=other)
    assert len(list(other.glob("zeroshot-*.npy"))) == 1
    assert not list(tmp_path.glob("**/.*.tmp"))  # no temporary files left behind


def test_fingerprint_follows_the_weights_not_the_file(checkpoint, model):
    clip, _ = model
    same = miniclip.load(checkpoint("odd_oc", layout="transformers"))[0]  # same tensors, other layout
    other = miniclip.load(checkpoint("odd_hf"))[0]  # same architecture, other seed
    assert model_fingerprint(clip) == model_fingerprint(same) != model_fingerprint(other)
    assert len(model_fingerprint(clip)) == 24


def test_fingerprint_is_the_same_on_every_backend(checkpoint, model):
    """Weights that live on a device (as CuPy arrays do) are fingerprinted through the backend's to_host, so an
    index built on the CPU is accepted on the GPU. Simulated with arrays that np.asarray refuses."""
    clip, _ = model

    class DeviceArray:  # like a cupy.ndarray: take() works, np.asarray raises
        def __init__(self, a):
            self.a, self.shape, self.size = a, a.shape, a.size

        def take(self, indices):
            return DeviceArray(self.a.take(indices))

        def __array__(self, *args, **kwargs):
            raise TypeError("implicit conversion to a NumPy array is not allowed")

    class DeviceOps(types.SimpleNamespace):
        pass

    from miniclip import ops

    device_ops = DeviceOps(**{k: getattr(ops, k) for k in dir(ops) if not k.startswith("_")})
    device_ops.prepare = lambda params: {k: DeviceArray(np.asarray(v)) for k, v in params.items()}
    device_ops.to_host = lambda x: x.a if isinstance(x, DeviceArray) else np.asarray(x)
    params, config = load_weights(checkpoint("odd_oc"))
    on_device = CLIP(params, config, device_ops)
    assert model_fingerprint(on_device) == model_fingerprint(clip)
    # the numba backend keeps its linear weights packed in its own panel order, before and after they are used
    for run in (False, True):
        packed = miniclip.load(checkpoint("odd_oc"), backend="numba")[0]
        if run:
            packed.encode_text(miniclip.tokenize(["a dog"], packed.config.context_length))
            packed.encode_image(np.zeros((1, 3, packed.config.image_size, packed.config.image_size), np.float32))
        assert model_fingerprint(packed) == model_fingerprint(clip)


def test_cli_cache_is_only_used_with_templates(images, checkpoint, tmp_path):
    weights = str(checkpoint("odd_oc"))
    assert main(["classify", images[0], "--labels", "a", "b", "--weights", weights]) == 0
    assert not (tmp_path / "home").exists()
    assert main(["classify", images[0], "--labels", "a", "b", "--templates", "simple", "--no-cache",
                 "--weights", weights]) == 0
    assert not (tmp_path / "home").exists()
    assert main(["classify", images[0], "--labels", "a", "b", "--templates", "simple", "--weights", weights]) == 0
    assert len(list((tmp_path / "home" / "cache" / "zeroshot").glob("zeroshot-*.npy"))) == 1


def test_fingerprint_of_a_model_without_readable_parameters(model):
    """A model object that only offers the public API (e.g. weights on another device) is fingerprinted by
    what it computes: stable, and different for different weights."""
    clip, _ = model

    class Opaque:
        def __init__(self, inner):
            self.config, self.encode_image, self.encode_text = inner.config, inner.encode_image, inner.encode_text

    a, b = Opaque(clip), Opaque(clip)
    assert model_fingerprint(a) == model_fingerprint(b) != model_fingerprint(clip)
