"""`miniclip-shapes`, the tiny CLIP that ships inside the package (trained by tools/train_shapes.py).

What it must do, measured on pictures it never saw (seeded scenes from tools/shapes_data.py, a seed the
training never used): name a shape and colour zero-shot (4 shapes x 4 colours, >= 90%), point explain's
patch-text map at the object a text names in a two-object picture (>= 80%), give the same answers on every
CPU backend, and load by name with no network. Also: the shipped files are the ones recorded beside the
training script, and they match open_clip's own outputs recorded there when the model was trained.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import miniclip
from miniclip.apps.explain import explain
from miniclip.cli import main
from miniclip.hub import registry
from miniclip.hub.download import download
from miniclip.model import normalize

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))
from shapes_data import EXAMPLES, SHAPES, draw_example, label_of, make_scene  # noqa: E402

SHIPPED = REPO / "miniclip" / "data" / "shapes"
RECORD = json.loads((REPO / "tools" / "shapes_model.json").read_text(encoding="utf-8"))
HELD_OUT_SEED = 20261130  # training draws from seeds 0 .. steps-1 and 12345 (its own evaluation)
COLORS4 = ("red", "green", "blue", "yellow")


@pytest.fixture(scope="module")
def shapes():
    return miniclip.load("miniclip-shapes", download=False)


def test_shipped_files_are_the_recorded_ones():
    for name, expected in RECORD["files"].items():
        data = (SHIPPED / name).read_bytes()
        assert len(data) == expected["bytes"], name
        assert hashlib.sha256(data).hexdigest() == expected["sha256"], name
    weights = SHIPPED / "open_clip_model.safetensors"
    assert weights.stat().st_size <= 8_000_000
    assert registry.lookup("miniclip-shapes").size_bytes == weights.stat().st_size


def test_shipped_examples_are_what_shapes_data_draws():
    assert sorted(p.name for p in (SHIPPED / "examples").iterdir()) == sorted(EXAMPLES)
    for name in EXAMPLES:
        shipped = np.asarray(Image.open(SHIPPED / "examples" / name).convert("RGB"))
        assert np.array_equal(shipped, np.asarray(draw_example(name))), name


def test_loads_by_name_without_network(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("MINICLIP_HOME", str(tmp_path))  # an empty cache: nothing downloaded
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there: any request would fail
    model, preprocess = miniclip.load("miniclip-shapes")
    cfg = model.config
    assert (cfg.image_size, cfg.patch_size, cfg.context_length, cfg.vocab_size, cfg.activation) == \
        (64, 8, 32, 49408, "gelu")
    assert preprocess(Image.new("RGB", (100, 80))).shape == (3, 64, 64)
    assert "miniclip-shapes" in miniclip.available_models()
    assert download("miniclip-shapes") == SHIPPED / "open_clip_model.safetensors"  # nothing to fetch
    assert registry.lookup("shapes").name == "miniclip-shapes" and registry.lookup("") is None

    assert main(["models"]) == 0
    row = next(r for r in capsys.readouterr().out.splitlines() if r.startswith("miniclip-shapes "))
    assert "(ships with miniclip)" in row and "7.6 MB" in row and row.rstrip().endswith("yes")


def test_matches_open_clip_outputs_recorded_at_training(shapes):
    model, preprocess = shapes
    reference = RECORD["reference"]
    images = np.stack([preprocess(draw_example(name)) for name in reference["images"]])
    tokens = miniclip.tokenize(reference["texts"], model.config.context_length)
    for ours, theirs in [(model.encode_image(images), reference["image_features"]),
                         (model.encode_text(tokens), reference["text_features"])]:
        theirs = np.asarray(theirs)
        error = np.linalg.norm(ours - theirs, axis=-1) / np.linalg.norm(theirs, axis=-1)
        assert error.max() < 1e-4


def held_out_single_objects(per_class: int = 10):
    rng = random.Random(HELD_OUT_SEED)
    scenes = []
    for shape in SHAPES:
        for color in COLORS4:
            scenes += [make_scene(rng, 1, shapes=(shape,), colors=(color,)) for _ in range(per_class)]
    return scenes


def test_zero_shot_accuracy_on_held_out_shapes_and_colours(shapes):
    model, preprocess = shapes
    labels = [label_of(s, c) for s in SHAPES for c in COLORS4]  # 16 classes
    scenes = held_out_single_objects()
    text = normalize(model.encode_text(miniclip.tokenize(labels, model.config.context_length)))
    image = normalize(model.encode_image(np.stack([preprocess(s.image) for s in scenes])))
    predicted = (image @ text.T).argmax(1)
    truth = np.array([labels.index(label_of(s.things[0].shape, s.things[0].color)) for s in scenes])
    accuracy = (predicted == truth).mean()
    print(f"miniclip-shapes zero-shot accuracy, 4 shapes x 4 colours, {len(scenes)} images: {accuracy:.1%}")
    assert accuracy >= 0.9


def peak_in_box(scene, thing, similarity: np.ndarray) -> bool:
    """Is the center of the patch where the map peaks inside the thing's box (canvas pixels)?"""
    grid = similarity.shape[0]
    row, col = np.unravel_index(similarity.argmax(), similarity.shape)
    cell = scene.side / grid  # square canvases: preprocessing only rescales them
    x, y = (col + 0.5) * cell, (row + 0.5) * cell
    left, top, right, bottom = thing.box
    return left <= x <= right and top <= y <= bottom


def test_explain_points_at_the_named_object(shapes):
    model, preprocess = shapes
    rng = random.Random(HELD_OUT_SEED + 1)
    scenes = [make_scene(rng, 2) for _ in range(60)]
    named = hits = other = 0
    for scene in scenes:
        for i, thing in enumerate(scene.things):  # each object in turn: the map must follow the text
            _, maps = explain(model, preprocess, scene.image, label_of(thing.shape, thing.color))
            named += 1
            hits += peak_in_box(scene, thing, maps["similarity"])
            other += peak_in_box(scene, scene.things[1 - i], maps["similarity"])
    print(f"miniclip-shapes explain: peak inside the named object {hits / named:.1%}, "
          f"inside the other one {other / named:.1%} ({named} maps)")
    assert hits / named >= 0.8


def test_backends_agree(shapes):
    model, preprocess = shapes
    fast, _ = miniclip.load("miniclip-shapes", backend="numba", download=False)
    scenes = held_out_single_objects(per_class=1)
    images = np.stack([preprocess(s.image) for s in scenes])
    tokens = miniclip.tokenize([label_of(s, c) for s in SHAPES for c in COLORS4], model.config.context_length)
    for encode in ("encode_image", "encode_text"):
        x = images if encode == "encode_image" else tokens
        plain, fused = getattr(model, encode)(x), getattr(fast, encode)(x)
        error = np.linalg.norm(fused - plain, axis=-1) / np.linalg.norm(plain, axis=-1)
        assert error.max() < 1e-4, encode
    assert np.abs(fast(images, tokens)[0] - model(images, tokens)[0]).max() < 1e-3


def test_classify_command_on_the_shipped_example(capsys):
    example = SHIPPED / "examples" / "red_circle.png"
    assert main(["classify", str(example), "--weights", "miniclip-shapes",
                 "--labels", "a red circle", "a blue square", "a green triangle"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[:3] == ["a", "red", "circle"], lines
