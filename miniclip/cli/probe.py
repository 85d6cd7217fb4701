"""`miniclip probe`: linear-probe accuracy on a folder of class folders (apps/probe.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from ..apps.index import find_images, iter_image_embeddings
from ..apps.probe import fit_probe, select_C, stratified_split
from ..errors import MiniclipError
from .common import add_model_options, load_model


def _class_folders(root: Path) -> list[Path]:
    if not root.is_dir():
        raise MiniclipError(f"{root}: not a folder")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(folders) < 2:
        raise MiniclipError(f"{root}: a probe needs one sub-folder of images per class and at least two classes; "
                            f"found {len(folders)} sub-folder{'s' * (len(folders) != 1)}")
    return folders


def cmd_probe(args: argparse.Namespace) -> None:
    C = None
    if args.C != "auto":
        try:
            C = float(args.C)
        except ValueError:
            C = -1.0
        if not C > 0:
            raise MiniclipError(f"--C must be a positive number or 'auto', got {args.C!r}")
    root = Path(args.folder)
    folders = _class_folders(root)
    model, preprocess = load_model(args)
    classes, features, labels, skipped = [], [], [], []
    for folder in folders:
        entries, _ = find_images(folder)
        for ok, rows, bad in iter_image_embeddings(model, preprocess, folder, entries, args.batch_size):
            features.append(rows)
            labels.extend([len(classes)] * len(ok))
            skipped.extend((f"{folder.name}/{path}", reason) for path, reason in bad)
        classes.append(folder.name)
    for path, reason in skipped:
        print(f"miniclip: warning: skipped {path}: {reason}", file=sys.stderr)
    X, y = np.concatenate(features), np.asarray(labels, dtype=np.int64)
    counts = np.bincount(y, minlength=len(classes))
    if (counts < 2).any():
        few = ", ".join(f"{c} ({n})" for c, n in zip(classes, counts, strict=True) if n < 2)
        raise MiniclipError(f"every class needs at least 2 readable images (one to train on, one to test); "
                            f"too few in: {few}")

    train, test = stratified_split(y, args.test_fraction, args.seed)
    if C is not None:
        how = "given"
    else:
        try:
            C, scores = select_C(X[train], y[train], seed=args.seed)
            grid = list(scores)
            how = (f"chosen by validation accuracy on a quarter of the training images, among {grid[0]:g} to "
                   f"{grid[-1]:g}, one value per decade")
        except MiniclipError:
            C, how = 1.0, "default: too few training images per class to hold some out for choosing it"
    probe = fit_probe(X[train], y[train], C, classes=classes, max_iter=args.max_iter)
    if not probe.result.converged:
        print(f"miniclip: warning: the optimizer stopped before converging ({probe.result.message}); "
              "try a smaller --C or a larger --max-iter", file=sys.stderr)

    train_acc = float((probe.predict(X[train]) == y[train]).mean())
    predicted = probe.predict(X[test])
    correct = predicted == y[test]
    print("classes: " + ", ".join(f"{c} ({n})" for c, n in zip(classes, counts, strict=True)))
    print(f"split: {len(train)} train / {len(test)} test images (test fraction {args.test_fraction:g}, "
          f"seed {args.seed})")
    print(f"C = {C:g} ({how})")
    print(f"train accuracy:    {train_acc:7.2%}")
    print(f"held-out accuracy: {correct.mean():7.2%} ({int(correct.sum())}/{len(test)}; chance "
          f"{1 / len(classes):.2%})")
    width = max(len(c) for c in classes)
    for k, name in enumerate(classes):
        mine = y[test] == k
        print(f"  {name:<{width}}  {int(correct[mine].sum())}/{int(mine.sum())}")


def add_commands(sub) -> None:
    p = sub.add_parser("probe", help="linear-probe accuracy on a folder of class sub-folders")
    p.add_argument("folder", metavar="DIR", help="folder with one sub-folder of images per class")
    p.add_argument("--test-fraction", type=float, default=0.25,
                   help="share of every class held out for testing (default 0.25)")
    p.add_argument("--seed", type=int, default=0, help="seed of the train/test split (default 0)")
    p.add_argument("--C", default="auto", metavar="C|auto",
                   help="inverse L2 regularization strength, as scikit-learn's C; 'auto' (default) picks it by "
                        "validation accuracy on part of the training images")
    p.add_argument("--max-iter", type=int, default=1000, help="L-BFGS iterations at most (default 1000)")
    add_model_options(p)
    p.set_defaults(func=cmd_probe)
