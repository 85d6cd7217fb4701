"""`miniclip explain` (heat maps) and `miniclip trace` (every stage of a forward pass): apps/explain.py."""

from __future__ import annotations

import argparse

import numpy as np

from ..apps.explain import explain, trace
from ..errors import MiniclipError
from ..preprocess import load_image
from ..tokenizer import tokenize
from .common import add_model_options, load_model


def cmd_explain(args: argparse.Namespace) -> None:
    model, preprocess = load_model(args)
    panel, maps = explain(model, preprocess, load_image(args.image), args.text)
    panel.save(args.out)
    g = model.config.grid_size
    best = np.unravel_index(maps["similarity"].argmax(), maps["similarity"].shape)
    print(f"wrote {args.out}: [image | patch-text similarity | attention rollout] on a {g}x{g} patch grid; "
          f"best-matching patch: row {best[0]}, column {best[1]}")


def cmd_trace(args: argparse.Namespace) -> None:
    if args.image is None and args.text is None:
        raise MiniclipError("give --image IMAGE and/or --text TEXT to trace")
    model, preprocess = load_model(args)
    pixels = preprocess(load_image(args.image))[None] if args.image else None
    tokens = tokenize([args.text], model.config.context_length, truncate=True) if args.text else None
    trace(model, pixels, tokens)


def add_commands(sub) -> None:
    p = sub.add_parser("explain", help="heat maps of where an image matches a text, and of attention rollout")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("--text", required=True, help="the text to locate, e.g. \"a dog\"")
    p.add_argument("--out", default="explain.png", help="output PNG (default: explain.png)")
    add_model_options(p)
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("trace", help="print every stage of one forward pass: names, shapes, statistics")
    p.add_argument("--image", metavar="IMAGE")
    p.add_argument("--text")
    add_model_options(p)
    p.set_defaults(func=cmd_trace)
