"""What the commands share: the model options, loading the model they name, checking the files they are
given before any work is done, embedding image files."""

from __future__ import annotations

import argparse
import difflib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from .. import load
from ..backends import BACKENDS
from ..config import ACTIVATIONS
from ..errors import MiniclipError
from ..hub.download import is_repo_id
from ..hub.registry import lookup, models
from ..model import CLIP
from ..preprocess import load_image
from ..terminal import Progress

WEIGHTS_ENV = "MINICLIP_WEIGHTS"
MAX_PIXELS_ENV = "MINICLIP_MAX_PIXELS"
WEIGHTS_HELP = (f"a model name (see `miniclip models`, e.g. ViT-B-32; downloaded on first use), a hub repo id, "
                f"a .safetensors file or a folder holding one (default: ${WEIGHTS_ENV})")
NO_WEIGHTS_ADVICE = ("e.g. --weights ViT-B-32 (downloaded on first use; `miniclip models` lists the names), or a "
                     "folder holding model.safetensors + config.json; without a network, `miniclip random-weights "
                     "ViT-B-32 DIR` writes random weights to try every command with")


def add_model_options(p: argparse.ArgumentParser, *, batch: bool = True, images: bool = True,
                      weights_help: str = WEIGHTS_HELP) -> None:
    """--weights, --backend, --activation; --batch-size for commands that embed many images; --max-pixels
    for commands that read images."""
    p.add_argument("--weights", default=os.environ.get(WEIGHTS_ENV), help=weights_help)
    p.add_argument("--backend", default="numpy", choices=["auto", *BACKENDS], help="ops backend (default: numpy)")
    p.add_argument("--activation", choices=ACTIVATIONS,
                   help="only for weights without a config file: quick_gelu (OpenAI) or gelu (LAION)")
    if batch:
        p.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default: 16)")
    if images:
        p.add_argument("--max-pixels", type=int, metavar="N",
                       help=f"refuse images of more than N pixels, a guard against decompression bombs (default: "
                            f"${MAX_PIXELS_ENV}, else Pillow's {Image.MAX_IMAGE_PIXELS})")


def _max_pixels(args: argparse.Namespace) -> int | None:
    if getattr(args, "max_pixels", None) is not None:
        value, where = args.max_pixels, "--max-pixels"
    elif os.environ.get(MAX_PIXELS_ENV, "").strip():
        value, where = os.environ[MAX_PIXELS_ENV].strip(), f"${MAX_PIXELS_ENV}"
    else:
        return None
    try:
        limit = int(value)
    except ValueError:
        limit = 0
    if limit < 1:
        raise MiniclipError(f"{where} must be a whole number of pixels, at least 1; got {value!r}")
    return limit


def check_weights_name(source: str) -> None:
    """A --weights that is neither a path nor a name miniclip knows: say so, with the close names."""
    if Path(source).expanduser().exists() or lookup(source) is not None or is_repo_id(source):
        return
    names = [*models(), *(a for info in models().values() for a in info.aliases)]
    close = difflib.get_close_matches(source, names, n=3, cutoff=0.75)
    guess = f"; did you mean {' or '.join(close)}?" if close else ""
    raise MiniclipError(f"{source}: no such file or folder, and not a model name{guess} "
                        "(`miniclip models` lists the names)")


def load_model(args: argparse.Namespace) -> tuple[CLIP, object]:
    if not args.weights:
        raise MiniclipError(f"no weights given: pass --weights or set ${WEIGHTS_ENV}; {NO_WEIGHTS_ADVICE}")
    check_weights_name(args.weights)
    if (limit := _max_pixels(args)) is not None:
        # load_image's default limit (Pillow refuses twice it outright); this process is the command's own
        Image.MAX_IMAGE_PIXELS = limit
    return load(args.weights, backend=args.backend, activation=args.activation)


def check_images(paths: Sequence[str]) -> None:
    """Before loading a model: every image path names a file (a folder is a mistake worth its own words)."""
    for path in paths:
        p = Path(path)
        if p.is_dir():
            raise MiniclipError(f"{path}: is a folder, not an image (for every image in a folder: `miniclip index "
                                f"{path} --out INDEX`)")
        if not p.exists():
            raise MiniclipError(f"{path}: no such file")


def check_out(path: str, option: str, suffixes: Sequence[str], inputs: Sequence[str] = (),
              others: str = "") -> Path:
    """An output file the command will write: its extension says its format (one of `suffixes`, the first
    named, or `others` in words), its folder exists, and it is not one of the command's inputs. Checked
    before any work, so a mistake costs nothing."""
    out = Path(path)
    if out.is_dir():
        raise MiniclipError(f"{option} {path}: is a folder; give a file name, e.g. {out / ('out' + suffixes[0])}")
    if out.suffix.lower() not in suffixes:
        named = others or " or ".join(suffixes)
        raise MiniclipError(f"{option} {path}: the file name must end in {named}")
    if not out.parent.is_dir():
        raise MiniclipError(f"{option} {path}: the folder {out.parent} does not exist")
    for source in inputs:
        if out.exists() and Path(source).exists() and out.samefile(source):
            raise MiniclipError(f"{option} {path}: is the input image; refusing to overwrite it")
    return out


def encode_image_files(model: CLIP, preprocess, paths: Sequence[str], batch_size: int) -> np.ndarray:  # -> [N, E]
    check_batch_size(batch_size)
    features = []
    bar = Progress("embedding", len(paths), unit="img", enabled=None if len(paths) > batch_size else False)
    for start in range(0, len(paths), batch_size):
        batch = paths[start:start + batch_size]
        pixels = np.stack([preprocess(load_image(p)) for p in batch])  # [b, 3, S, S]
        features.append(model.encode_image(pixels))
        bar.update(len(batch))
    bar.finish()
    return np.concatenate(features)


def check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise MiniclipError(f"--batch-size must be at least 1, got {batch_size}")

