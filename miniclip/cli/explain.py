"""`miniclip explain` (heat maps) and `miniclip trace` (every stage of a forward pass): apps/explain.py."""

from __future__ import annotations

import argparse
import io

import numpy as np
from PIL import Image

from ..apps.explain import explain, trace
from ..errors import MiniclipError
from ..preprocess import load_image
from ..store import atomic_write_bytes
from ..tokenizer import tokenize
from .common import add_model_options, check_images, check_out, load_model


def cmd_explain(args: argparse.Namespace) -> None:
    if not args.text.strip():
        raise MiniclipError("--text is empty: give the text to locate, e.g. --text \"a dog\"")
    Image.init()  # Pillow's writers, for the extensions --out may have
    writable = sorted(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.SAVE)
    suffixes = [".png", *(ext for ext in writable if ext != ".png")]
    check_images([args.image])
    out = check_out(args.out, "--out", suffixes, inputs=[args.image],
                    others=".png (or another picture format Pillow writes: .jpg, .webp, ...)")
    model, preprocess = load_model(args)
    panel, maps = explain(model, preprocess, load_image(args.image), args.text)
    buffer = io.BytesIO()
    panel.convert("RGB").save(buffer, format=Image.registered_extensions()[out.suffix.lower()])
    atomic_write_bytes(out, buffer.getvalue())  # never a half-written picture, even on Ctrl-C
    g = model.config.grid_size
    best = np.unravel_index(maps["similarity"].argmax(), maps["similarity"].shape)
    print(f"wrote {out}: [image | patch-text similarity | attention rollout] on a {g}x{g} patch grid; "
          f"best-matching patch: row {best[0]}, column {best[1]}")


def cmd_trace(args: argparse.Namespace) -> None:
    if args.image is None and args.text is None:
        raise MiniclipError("give --image IMAGE and/or --text TEXT to trace")
    if args.image is not None:
        check_images([args.image])
    model, preprocess = load_model(args)
    pixels = preprocess(load_image(args.image))[None] if args.image else None
    tokens = tokenize([args.text], model.config.context_length, truncate=True) if args.text else None
    trace(model, pixels, tokens)


def add_commands(sub) -> None:
    p = sub.add_parser("explain", help="heat maps of where an image matches a text, and of attention rollout")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("--text", required=True,
                   help="the text to locate, e.g. \"a dog\" (cut to the context length if longer)")
    p.add_argument("--out", default="explain.png", metavar="OUT.png",
                   help="output picture (default: explain.png; .jpg etc. work too)")
    add_model_options(p, batch=False)
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("trace", help="print every stage of one forward pass: names, shapes, statistics")
    p.add_argument("--image", metavar="IMAGE")
    p.add_argument("--text", help="a text (cut to the context length if longer)")
    add_model_options(p, batch=False)
    p.set_defaults(func=cmd_trace)
