"""`miniclip index` and `miniclip search`: the command line of apps/search.py."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

from ..apps.search import (
    IMAGE_EXTENSIONS,
    build_index,
    embed_image_query,
    embed_text_query,
    load_index,
    search,
    write_contact_sheet,
    write_html,
)
from ..apps.zeroshot import model_fingerprint
from ..errors import MiniclipError
from .common import add_model_options, load_model


def _display(path: Path) -> str:
    """A path as the user would type it: relative to the current folder when inside it."""
    rel = os.path.relpath(path)
    return path.as_posix() if rel.startswith("..") else Path(rel).as_posix()


def _cluster(args: argparse.Namespace):
    """The Dask client for --cluster (a context manager), or a null context without it: dask is only
    imported when asked for."""
    if not args.cluster:
        return contextlib.nullcontext()
    from ..apps.cluster import connect

    return connect(args.cluster)


def cmd_index(args: argparse.Namespace) -> None:
    model, preprocess = load_model(args)
    try:
        with _cluster(args) as client:
            embed = None
            if client is not None:
                from ..apps.cluster import ModelSpec, embedder

                embed = embedder(client, ModelSpec.of(args.weights, args.backend, args.activation), model,
                                 args.batch_size)
            report = build_index(model, preprocess, args.folder, args.out, batch_size=args.batch_size,
                                 checkpoint_every=args.checkpoint_every, weights=args.weights, embed=embed)
    except KeyboardInterrupt:
        print(f"\nminiclip: interrupted; the images embedded so far are saved in {args.out}: run the same "
              "command again to continue", file=sys.stderr)
        raise SystemExit(130) from None
    for note in report.notes:
        print(f"miniclip: note: {note}", file=sys.stderr)
    index = report.index
    print(f"{args.out}: {len(index.entries)} images ({report.embedded} embedded, {report.reused} unchanged, "
          f"{report.removed} removed or changed since the last run)")
    if report.skipped:
        print(f"skipped {len(report.skipped)} unreadable file{'s' * (len(report.skipped) != 1)}:")
        for path, reason in report.skipped:
            print(f"  {path}: {reason}")
    if not index.entries:
        print(f"miniclip: warning: no readable images under {args.folder} (looked for "
              f"{', '.join(sorted(IMAGE_EXTENSIONS))})", file=sys.stderr)


def cmd_search(args: argparse.Namespace) -> None:
    if (args.query is None) == (args.image is None):
        raise MiniclipError('give either a text query ("a dog on a beach") or --image FILE, not both')
    # Before loading the model: a broken index fails fast. Memory-mapped: an index of a million images is
    # searched without reading it into memory (its checksum is checked up to VERIFY_LIMIT, or with --verify).
    index = load_index(args.index, mmap=True, verify=True if args.verify else None)
    if not index.entries:
        raise MiniclipError(f"{args.index}: the index holds no images")
    model, preprocess = load_model(args)
    if model_fingerprint(model) != index.model:
        built = index.manifest.get("weights")
        raise MiniclipError(f"{args.index} was built with a different model{f' ({built})' if built else ''} "
                            "than the weights given: search with those weights, or re-run `miniclip index` with "
                            "these ones")
    if not index.complete:
        print(f"miniclip: warning: {args.index} is incomplete (an interrupted `miniclip index` run): searching "
              f"the {len(index.entries)} images embedded so far; re-run `miniclip index` to finish it",
              file=sys.stderr)
    if args.image is not None:
        query, title = embed_image_query(model, preprocess, args.image), f"images like {args.image}"
    else:
        query, title = embed_text_query(model, args.query), args.query
    if args.top < 1:
        raise MiniclipError(f"--top must be at least 1, got {args.top}")
    with _cluster(args) as client:
        if client is not None:
            from ..apps.cluster import scorer

            results = search(index, query, args.top, scorer=scorer(client))
        else:
            results = search(index, query, args.top)
    for rank, (path, score) in enumerate(results, start=1):
        print(f"{rank:3d}  {score:7.4f}  {_display(path)}")
    if args.html:
        write_html(results, args.html, title)
        print(f"wrote {args.html}", file=sys.stderr)
    if args.sheet:
        write_contact_sheet(results, args.sheet, title)
        print(f"wrote {args.sheet}", file=sys.stderr)


def add_commands(sub) -> None:
    p = sub.add_parser("index", help="embed every image under a folder into a search index (incremental)")
    p.add_argument("folder", metavar="DIR", help="folder of images, searched recursively")
    p.add_argument("--out", required=True, metavar="INDEX", help="index folder to create or update")
    p.add_argument("--checkpoint-every", type=int, default=32, metavar="N",
                   help="save progress every N batches, so an interrupted run loses at most one chunk (default 32)")
    p.add_argument("--cluster", metavar="ADDRESS",
                   help="embed on a Dask cluster: a scheduler (tcp://host:8786) or local:N for N worker processes "
                        "here; the images and weights must be at the same paths on every machine (docs/scale.md)")
    add_model_options(p)
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("search", help="find indexed images by a text or an example image")
    p.add_argument("index", metavar="INDEX", help="an index folder made by `miniclip index`")
    p.add_argument("query", nargs="?", metavar="TEXT", help='what to look for, e.g. "a dog on a beach"')
    p.add_argument("--image", metavar="FILE", help="find images similar to this one instead of a text")
    p.add_argument("--top", type=int, default=10, metavar="K", help="number of results (default 10)")
    p.add_argument("--html", metavar="OUT.html", help="also write a web page of the results")
    p.add_argument("--sheet", metavar="OUT.png", help="also write a contact sheet (PNG) of the results")
    p.add_argument("--verify", action="store_true",
                   help="check the embeddings' SHA-256 even for a large index (by default only up to 128 MiB; "
                        "size, header and shape are always checked)")
    p.add_argument("--cluster", metavar="ADDRESS",
                   help="score the index's blocks on a Dask cluster (tcp://host:8786 or local:N); the index must "
                        "be at the same path on every machine")
    add_model_options(p)
    p.set_defaults(func=cmd_search)
