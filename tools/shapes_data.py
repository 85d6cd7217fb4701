"""The synthetic world of the `miniclip-shapes` model: Pillow-drawn shapes and the captions that describe them.

Used by `tools/train_shapes.py` (training, with PyTorch) and by `tests/test_shapes_model.py` (CI, without):
this module needs only Pillow and NumPy, and miniclip never imports it at run time.

A scene is one or two objects on a background. Each object has a shape (circle, square, triangle, star), a
colour (six named ones), a size (small or big) and a position; the background is white, a pale colour, or
pale with pixel noise. Canvases are square, 64 to 160 pixels a side, so that miniclip's own preprocessing
(bicubic resize to 64, center crop) sees anti-aliased edges at many scales, as it will on pictures drawn by
hand. Captions come from templates: "a red circle", "a small blue square on the left", "a big green
triangle at the top", "a red circle and a yellow star", "a blue star on the left and a green square on the
right".

Everything is drawn from `random.Random(seed)` (whose stream Python keeps stable) and NumPy's legacy
`RandomState` (frozen across NumPy versions), so a seed gives the same pictures on any machine.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "star")
COLORS = {  # name -> RGB, saturated so that every colour stands apart from every (pale) background
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 220),
    "yellow": (235, 200, 30), "orange": (245, 130, 20), "purple": (140, 50, 180),
}
SIZES = ("small", "big")
MIN_SIDE, MAX_SIDE = 64, 160  # canvas side in pixels (the model sees them resized to 64)


@dataclass(frozen=True)
class Thing:
    """One drawn object: what it is and where (box in canvas pixels: left, top, right, bottom)."""

    shape: str
    color: str
    size: str
    box: tuple[int, int, int, int]

    def position(self, side: int) -> str | None:
        """"on the left"/"on the right"/"at the top"/"at the bottom", when the object's center is clearly
        there (a third of the canvas from the middle), else None."""
        cx = (self.box[0] + self.box[2]) / 2 / side
        cy = (self.box[1] + self.box[3]) / 2 / side
        horizontal = "on the left" if cx < 0.38 else "on the right" if cx > 0.62 else None
        vertical = "at the top" if cy < 0.38 else "at the bottom" if cy > 0.62 else None
        if horizontal and vertical:  # a corner: name the stronger direction
            return horizontal if abs(cx - 0.5) >= abs(cy - 0.5) else vertical
        return horizontal or vertical


@dataclass(frozen=True)
class Scene:
    image: Image.Image
    things: tuple[Thing, ...]

    @property
    def side(self) -> int:
        return self.image.size[0]


def draw_thing(draw: ImageDraw.ImageDraw, thing: Thing) -> None:
    left, top, right, bottom = thing.box
    rgb = COLORS[thing.color]
    if thing.shape == "circle":
        draw.ellipse(thing.box, fill=rgb)
    elif thing.shape == "square":
        draw.rectangle(thing.box, fill=rgb)
    elif thing.shape == "triangle":
        draw.polygon([((left + right) / 2, top), (right, bottom), (left, bottom)], fill=rgb)
    elif thing.shape == "star":  # five points, inner radius 0.45 of the outer one
        cx, cy, r = (left + right) / 2, (top + bottom) / 2, (right - left) / 2
        points = []
        for k in range(10):
            angle = -math.pi / 2 + k * math.pi / 5
            radius = r if k % 2 == 0 else 0.45 * r
            points.append((cx + radius * math.cos(angle), cy + 0.95 * radius * math.sin(angle) + 0.05 * r))
        draw.polygon(points, fill=rgb)
    else:
        raise ValueError(f"unknown shape {thing.shape!r}; known: {', '.join(SHAPES)}")


def background(rng: random.Random, side: int, kind: str | None = None) -> Image.Image:
    """White (half the time), a pale colour, or a pale colour with per-pixel noise."""
    kind = kind or rng.choices(["white", "pale", "noisy"], weights=[2, 1, 1])[0]
    if kind == "white":
        return Image.new("RGB", (side, side), "white")
    base = np.array([rng.randint(190, 255) for _ in range(3)], np.int64)
    if kind == "pale":
        return Image.new("RGB", (side, side), tuple(int(v) for v in base))
    noise = np.random.RandomState(rng.getrandbits(31)).randint(-40, 41, size=(side, side, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB")


def _box(rng: random.Random, side: int, size: str, taken: list[tuple[int, int, int, int]]):
    """A square box for an object of `size` that stays inside the canvas and clear of `taken`, or None."""
    lo, hi = (0.24, 0.32) if size == "small" else (0.38, 0.52)
    for _ in range(50):
        s = round(side * rng.uniform(lo, hi))
        margin = max(1, side // 32)
        left = rng.randint(margin, side - s - margin)
        top = rng.randint(margin, side - s - margin)
        box = (left, top, left + s, top + s)
        gap = side // 16
        if all(box[2] + gap <= o[0] or o[2] + gap <= box[0] or box[3] + gap <= o[1] or o[3] + gap <= box[1]
               for o in taken):
            return box
    return None


def make_scene(rng: random.Random, n_objects: int | None = None, side: int | None = None,
               shapes: tuple[str, ...] = SHAPES, colors: tuple[str, ...] = tuple(COLORS),
               kind: str | None = None) -> Scene:
    """A random scene: 1 or 2 objects (two different shape/colour pairs) on a random background."""
    n = n_objects or rng.choice([1, 1, 2])
    side = side or rng.randint(MIN_SIDE, MAX_SIDE)
    image = background(rng, side, kind)
    things: list[Thing] = []
    while len(things) < n:
        shape, color = rng.choice(shapes), rng.choice(colors)
        if any((t.shape, t.color) == (shape, color) for t in things):
            continue
        size = "small" if n == 2 and rng.random() < 0.5 else rng.choice(SIZES)
        box = _box(rng, side, size, [t.box for t in things])
        if box is None:  # no room left for this one beside the first: start over with both small
            things = [Thing(t.shape, t.color, "small", _box(rng, side, "small", [])) for t in things]
            continue
        things.append(Thing(shape, color, size, box))
    draw = ImageDraw.Draw(image)
    for thing in things:
        draw_thing(draw, thing)
    return Scene(image, tuple(things))


def describe(thing: Thing, side: int, rng: random.Random) -> str:
    """One object's phrase: "a red circle", optionally with its size and position."""
    words = ["a"]
    if rng.random() < 0.4:
        words.append(thing.size)
    words += [thing.color, thing.shape]
    where = thing.position(side)
    if where and rng.random() < 0.4:
        words.append(where)
    return " ".join(words)


def caption(scene: Scene, rng: random.Random) -> str:
    """A template caption naming every object in the scene, in random order."""
    things = list(scene.things)
    rng.shuffle(things)
    return " and ".join(describe(t, scene.side, rng) for t in things)


def label_of(shape: str, color: str) -> str:
    """The zero-shot class prompt for a shape/colour pair: "a red circle"."""
    return f"a {color} {shape}"


# The pictures shipped in miniclip/data/shapes/examples/: fixed scenes drawn on white, so that the README's
# and the tutorial's commands have something to show. tests/test_shapes_model.py checks that the shipped
# files are exactly what this draws.
EXAMPLES: dict[str, tuple[Thing, ...]] = {
    "red_circle.png": (Thing("circle", "red", "big", (34, 30, 94, 90)),),
    "blue_square_yellow_star.png": (Thing("square", "blue", "small", (12, 40, 52, 80)),
                                    Thing("star", "yellow", "small", (74, 34, 118, 78))),
}
EXAMPLE_SIDE = 128


def draw_example(name: str) -> Image.Image:
    image = Image.new("RGB", (EXAMPLE_SIDE, EXAMPLE_SIDE), "white")
    draw = ImageDraw.Draw(image)
    for thing in EXAMPLES[name]:
        draw_thing(draw, thing)
    return image


if __name__ == "__main__":  # python tools/shapes_data.py DIR: write the example pictures into DIR
    import sys
    from pathlib import Path

    folder = Path(sys.argv[1])
    folder.mkdir(parents=True, exist_ok=True)
    for example in EXAMPLES:
        draw_example(example).save(folder / example, optimize=True)
        print(folder / example)
