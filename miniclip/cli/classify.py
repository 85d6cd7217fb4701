"""`miniclip classify` (zero-shot, with prompt ensembles) and `miniclip embed`."""

from __future__ import annotations

import argparse

import numpy as np

from ..apps.zeroshot import imagenet_classes, load_templates, softmax, zero_shot_classifier
from ..errors import MiniclipError
from ..model import normalize
from ..store import atomic_write_bytes, npy_bytes
from ..terminal import Progress, display_width, ljust
from ..tokenizer import tokenize
from .common import add_model_options, check_batch_size, check_images, check_out, encode_image_files, load_model


def _labels(args: argparse.Namespace) -> list[str]:
    given = [name for name, value in (("--labels", args.labels), ("--labels-file", args.labels_file),
                                      ("--imagenet", args.imagenet)) if value]
    if len(given) > 1:
        raise MiniclipError(f"give one of --labels, --labels-file or --imagenet, not {' and '.join(given)}")
    if not given:
        raise MiniclipError("give the candidate labels with --labels, e.g. --labels \"a diagram\" \"a dog\", "
                            "--labels-file FILE (one per line), or --imagenet for the 1000 ImageNet classes")
    if args.imagenet:
        return imagenet_classes()
    if args.labels_file:
        try:
            with open(args.labels_file, encoding="utf-8") as f:
                labels = [line.strip() for line in f if line.strip()]
        except UnicodeDecodeError as e:
            raise MiniclipError(f"{args.labels_file}: not UTF-8 text ({e})") from None
        if not labels:
            raise MiniclipError(f"{args.labels_file}: no labels in it (one per line)")
        return labels
    empty = [i + 1 for i, label in enumerate(args.labels) if not label.strip()]
    if empty:
        raise MiniclipError(f"--labels: label {empty[0]} is empty; every label needs some text")
    return args.labels


def cmd_classify(args: argparse.Namespace) -> None:
    labels = _labels(args)
    if args.top is not None and args.top < 1:
        raise MiniclipError(f"--top must be at least 1, got {args.top}")
    check_batch_size(args.batch_size)
    check_images(args.images)
    templates = load_templates(args.templates)  # before loading the model, so a bad file fails fast
    model, preprocess = load_model(args)
    # Prompt ensembling (CLIP paper section 3.1.4): every label in every template, averaged per label. Only
    # then is the [E, C] matrix worth caching; verbatim labels are a handful of prompts.
    n_prompts = len(labels) * (len(templates) if templates else 1)
    bar = Progress("encoding prompts", n_prompts, unit="prompts", enabled=None if n_prompts > 256 else False)
    cache = bool(templates or args.imagenet) and not args.no_cache
    text_features = zero_shot_classifier(model, labels, templates, cache=cache, truncate=args.truncate,
                                         progress=lambda done, total: bar.update(done - bar.done))
    bar.finish()
    image_features = normalize(encode_image_files(model, preprocess, args.images, args.batch_size))
    probs = softmax(np.exp(model.logit_scale) * image_features @ text_features)  # [N_images, N_labels]
    top = (5 if args.imagenet else len(labels)) if args.top is None else args.top
    width = max(display_width(labels[i]) for p in probs for i in np.argsort(-p, kind="stable")[:top])
    for path, p in zip(args.images, probs, strict=True):
        print(path)
        for i in np.argsort(-p, kind="stable")[:top]:
            print(f"  {ljust(labels[i], width)}  {p[i]:8.4%}")


def cmd_embed(args: argparse.Namespace) -> None:
    if bool(args.images) == bool(args.texts):
        raise MiniclipError("give either --images or --texts, not both")
    out = check_out(args.out, "--out", [".npy"], inputs=args.images or ())
    if args.images:
        check_batch_size(args.batch_size)
        check_images(args.images)
    model, preprocess = load_model(args)
    if args.images:
        features = encode_image_files(model, preprocess, args.images, args.batch_size)
    else:
        features = model.encode_text(tokenize(args.texts, model.config.context_length, truncate=args.truncate))
    if args.normalize:
        features = normalize(features)
    atomic_write_bytes(out, npy_bytes(features))  # float32; never a half-written file, even on Ctrl-C
    kind = "image" if args.images else "text"
    print(f"wrote {features.shape[0]} {kind} embeddings of width {features.shape[1]} to {out}")


TRUNCATE_HELP = "cut texts longer than the model's context length (77 tokens) instead of refusing them"


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("classify", help="zero-shot classification of images among text labels")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--labels", nargs="+", metavar="LABEL", help="candidate descriptions, e.g. \"a dog\"")
    p.add_argument("--labels-file", metavar="FILE", help="candidate descriptions, one per line (UTF-8)")
    p.add_argument("--imagenet", action="store_true", help="use the 1000 ImageNet class names as the labels "
                   "(shows the top 5 unless --top is given)")
    p.add_argument("--templates", metavar="imagenet|simple|FILE",
                   help="prompt ensembling: put every label into these templates and average their embeddings "
                        "(imagenet: openai's 80; simple: 'a photo of a {}.'; FILE: one template per line with {}). "
                        "Default: labels used verbatim")
    p.add_argument("--no-cache", action="store_true",
                   help="do not read or write the cached class embeddings (in $MINICLIP_HOME/cache/zeroshot, else "
                        "~/.cache/miniclip/zeroshot)")
    p.add_argument("--top", type=int, metavar="K", help="show only the K most probable labels per image")
    p.add_argument("--truncate", action="store_true", help=TRUNCATE_HELP)
    add_model_options(p)
    p.set_defaults(func=cmd_classify)

    p = sub.add_parser("embed", help="write image or text embeddings to a .npy file")
    p.add_argument("--images", nargs="+", metavar="IMAGE", help="image files to embed (one row each)")
    p.add_argument("--texts", nargs="+", metavar="TEXT", help="texts to embed (one row each), e.g. \"a dog\"")
    p.add_argument("--out", required=True, metavar="OUT.npy", help="output .npy file: float32 [N, embed_dim]")
    p.add_argument("--normalize", action="store_true", help="L2-normalize each embedding")
    p.add_argument("--truncate", action="store_true", help=TRUNCATE_HELP)
    add_model_options(p)
    p.set_defaults(func=cmd_embed)
