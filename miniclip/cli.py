"""The `miniclip` command (also `python -m miniclip`).

    miniclip classify IMAGE... --labels "a diagram" "a dog" --weights PATH
    miniclip embed --images IMAGE... --out image_features.npy --weights PATH
    miniclip embed --texts "a dog" "a cat" --out text_features.npy --weights PATH
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings
from collections.abc import Sequence

import numpy as np

from . import load, tokenize
from .backends import BACKENDS
from .errors import MiniclipError
from .image_processor import load_image
from .model import CLIP, normalize
from .zeroshot import imagenet_classes, load_templates, softmax, zero_shot_classifier

WEIGHTS_ENV = "MINICLIP_WEIGHTS"

# Modules that bring their own sub-commands: each defines `add_commands(subparsers)`.
COMMAND_MODULES: tuple[str, ...] = ("miniclip.search", "miniclip.probe", "miniclip.registry", "miniclip.hub",
                                   "miniclip.verify", "miniclip.convert", "miniclip.explain")


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
    show_progress = len(paths) > batch_size and sys.stderr.isatty()
    for start in range(0, len(paths), batch_size):
        batch = paths[start:start + batch_size]
        pixels = np.stack([preprocess(load_image(p)) for p in batch])  # [b, 3, S, S]
        features.append(model.encode_image(pixels))
        if show_progress:
            print(f"\rembedded {start + len(batch)}/{len(paths)} images", end="", file=sys.stderr)
    if show_progress:
        print(file=sys.stderr)
    return np.concatenate(features)


def _prompt_progress(done: int, total: int) -> None:
    print(f"\rencoded {done}/{total} prompts", end="\n" if done == total else "", file=sys.stderr)


def cmd_classify(args: argparse.Namespace) -> None:
    if args.imagenet and args.labels:
        raise MiniclipError("give either --labels or --imagenet, not both")
    if not args.labels and not args.imagenet:
        raise MiniclipError("give the candidate labels with --labels, e.g. --labels \"a diagram\" \"a dog\", "
                            "or --imagenet for the 1000 ImageNet classes")
    labels = imagenet_classes() if args.imagenet else args.labels
    templates = load_templates(args.templates)  # before loading the model, so a bad file fails fast
    model, preprocess = load_model(args)
    # Prompt ensembling (CLIP paper section 3.1.4): every label in every template, averaged per label. Only
    # then is the [E, C] matrix worth caching; verbatim labels are a handful of prompts.
    n_prompts = len(labels) * (len(templates) if templates else 1)
    show = sys.stderr.isatty() and n_prompts > 256
    text_features = zero_shot_classifier(model, labels, templates, cache=bool(templates or args.imagenet)
                                         and not args.no_cache, progress=_prompt_progress if show else None)
    image_features = normalize(encode_image_files(model, preprocess, args.images, args.batch_size))
    probs = softmax(np.exp(model.logit_scale) * image_features @ text_features)  # [N_images, N_labels]
    top = (5 if args.imagenet else len(labels)) if args.top is None else max(1, args.top)
    width = max(len(labels[i]) for p in probs for i in np.argsort(-p, kind="stable")[:top])
    for path, p in zip(args.images, probs, strict=True):
        print(path)
        for i in np.argsort(-p, kind="stable")[:top]:
            print(f"  {labels[i]:<{width}}  {p[i]:8.4%}")


def cmd_embed(args: argparse.Namespace) -> None:
    if bool(args.images) == bool(args.texts):
        raise MiniclipError("give either --images or --texts")
    model, preprocess = load_model(args)
    if args.images:
        features = encode_image_files(model, preprocess, args.images, args.batch_size)
    else:
        features = model.encode_text(tokenize(args.texts, model.config.context_length, truncate=args.truncate))
    if args.normalize:
        features = normalize(features)
    np.save(args.out, features.astype(np.float32))
    kind = "image" if args.images else "text"
    print(f"wrote {features.shape[0]} {kind} embeddings of width {features.shape[1]} to {args.out}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="miniclip", description="CLIP in plain NumPy.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("classify", help="zero-shot classification of images among text labels")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--labels", nargs="+", metavar="LABEL", help="candidate descriptions, e.g. \"a dog\"")
    p.add_argument("--imagenet", action="store_true", help="use the 1000 ImageNet class names as the labels "
                   "(shows the top 5 unless --top is given)")
    p.add_argument("--templates", metavar="imagenet|simple|FILE",
                   help="prompt ensembling: put every label into these templates and average their embeddings "
                        "(imagenet: openai's 80; simple: 'a photo of a {}.'; FILE: one template per line with {}). "
                        "Default: labels used verbatim")
    p.add_argument("--no-cache", action="store_true",
                   help="do not read or write the cached class embeddings (in $MINICLIP_HOME/cache/zeroshot, else "
                        "~/.cache/miniclip/zeroshot)")
    p.add_argument("--top", type=int, help="show only the K most probable labels per image")
    add_model_options(p)
    p.set_defaults(func=cmd_classify)

    p = sub.add_parser("embed", help="write image or text embeddings to a .npy file")
    p.add_argument("--images", nargs="+", metavar="IMAGE")
    p.add_argument("--texts", nargs="+", metavar="TEXT")
    p.add_argument("--out", required=True, help="output .npy file: float32 [N, embed_dim]")
    p.add_argument("--normalize", action="store_true", help="L2-normalize each embedding")
    p.add_argument("--truncate", action="store_true", help="cut texts longer than the context length")
    add_model_options(p)
    p.set_defaults(func=cmd_embed)

    for module in COMMAND_MODULES:
        importlib.import_module(module).add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def show_warning(message, category, filename, lineno, file=None, line=None):
        print(f"miniclip: warning: {message}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = show_warning
        try:
            args.func(args)
        except (MiniclipError, OSError) as e:
            print(f"miniclip: error: {e}", file=sys.stderr)
            return 1
    return 0
