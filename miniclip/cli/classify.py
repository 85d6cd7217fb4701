"""`miniclip classify` (zero-shot, with prompt ensembles) and `miniclip embed`."""

from __future__ import annotations

import argparse

import numpy as np

from ..apps.zeroshot import imagenet_classes, load_templates, softmax, zero_shot_classifier
from ..errors import MiniclipError
from ..model import normalize
from ..terminal import Progress, display_width, ljust
from ..tokenizer import tokenize
from .common import add_model_options, encode_image_files, load_model


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
    bar = Progress("encoding prompts", n_prompts, unit="prompts", enabled=None if n_prompts > 256 else False)
    cache = bool(templates or args.imagenet) and not args.no_cache
    text_features = zero_shot_classifier(model, labels, templates, cache=cache,
                                         progress=lambda done, total: bar.update(done - bar.done))
    bar.finish()
    image_features = normalize(encode_image_files(model, preprocess, args.images, args.batch_size))
    probs = softmax(np.exp(model.logit_scale) * image_features @ text_features)  # [N_images, N_labels]
    top = (5 if args.imagenet else len(labels)) if args.top is None else max(1, args.top)
    width = max(display_width(labels[i]) for p in probs for i in np.argsort(-p, kind="stable")[:top])
    for path, p in zip(args.images, probs, strict=True):
        print(path)
        for i in np.argsort(-p, kind="stable")[:top]:
            print(f"  {ljust(labels[i], width)}  {p[i]:8.4%}")


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


def add_commands(sub: argparse._SubParsersAction) -> None:
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
