"""What the commands share: the model options, loading the model they name, embedding image files."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

import numpy as np

from .. import load
from ..backends import BACKENDS
from ..errors import MiniclipError
from ..model import CLIP
from ..preprocess import load_image
from ..terminal import Progress

WEIGHTS_ENV = "MINICLIP_WEIGHTS"

def add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", default=os.environ.get(WEIGHTS_ENV),
                   help=f"a .safetensors file or a directory holding one (default: ${WEIGHTS_ENV})")
    p.add_argument("--backend", default="numpy", choices=["auto", *BACKENDS], help="ops backend (default: numpy)")
    p.add_argument("--activation", choices=["quick_gelu", "gelu"],
                   help="only for weights without a config file: quick_gelu (OpenAI) or gelu (LAION)")
    p.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default: 16)")


def load_model(args: argparse.Namespace) -> tuple[CLIP, object]:
    if not args.weights:
        raise MiniclipError(
            f"no weights given: pass --weights PATH or set ${WEIGHTS_ENV} to a CLIP .safetensors file or a "
            "directory holding one (e.g. openai/clip-vit-base-patch32 from the Hugging Face hub: "
            "model.safetensors + config.json); see weights/README.md")
    return load(args.weights, backend=args.backend, activation=args.activation)


def encode_image_files(model: CLIP, preprocess, paths: Sequence[str], batch_size: int) -> np.ndarray:  # -> [N, E]
    if batch_size < 1:
        raise MiniclipError(f"--batch-size must be at least 1, got {batch_size}")
    features = []
    bar = Progress("embedding", len(paths), unit="img", enabled=None if len(paths) > batch_size else False)
    for start in range(0, len(paths), batch_size):
        batch = paths[start:start + batch_size]
        pixels = np.stack([preprocess(load_image(p)) for p in batch])  # [b, 3, S, S]
        features.append(model.encode_image(pixels))
        bar.update(len(batch))
    bar.finish()
    return np.concatenate(features)
