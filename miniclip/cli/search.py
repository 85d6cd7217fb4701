"""`miniclip index` and `miniclip search`: the command line of apps/index.py and apps/search.py."""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
from pathlib import Path

from ..apps.index import IMAGE_EXTENSIONS, MANIFEST, build_index, load_index
from ..apps.search import embed_image_query, embed_text_query, search, write_contact_sheet, write_html
from ..apps.zeroshot import model_fingerprint
from ..errors import BrokenIndexError, MiniclipError
from ..terminal import printable
from .common import WEIGHTS_HELP, add_model_options, check_batch_size, check_images, check_out, load_model


def _display(path: Path) -> str:
    """A path as the user would type it: relative to the current folder when inside it; control characters
    and bytes that are not UTF-8 shown escaped (terminal.printable), never sent to the terminal."""
    rel = os.path.relpath(path)
    return printable(path.as_posix() if rel.startswith("..") else Path(rel).as_posix())


def _cluster(args: argparse.Namespace):
    """The Dask client for --cluster (a context manager), or a null context without it: dask is only
    imported when asked for."""
    if not args.cluster:
        return contextlib.nullcontext()
    from ..apps.cluster import connect

    return connect(args.cluster)


def cmd_index(args: argparse.Namespace) -> None:
    check_batch_size(args.batch_size)
    model, preprocess = load_model(args)
    out = Path(args.out)
    created = not out.exists()
    # The manifest records the weights, so that `miniclip search` can use them without --weights: a path as
    # an absolute one (the search may run from another folder), a model name as it is.
    weights = str(Path(args.weights).expanduser().resolve()) if Path(args.weights).expanduser().exists() \
        else args.weights
    try:
        with _cluster(args) as client:
            embed = None
            if client is not None:
                from ..apps.cluster import ModelSpec, embedder

                embed = embedder(client, ModelSpec.of(args.weights, args.backend, args.activation), model,
                                 args.batch_size)
            report = build_index(model, preprocess, args.folder, args.out, batch_size=args.batch_size,
                                 checkpoint_every=args.checkpoint_every, weights=weights, embed=embed)
    except KeyboardInterrupt:
        if created and _nothing_saved(out):
            shutil.rmtree(out, ignore_errors=True)
            print("\nminiclip: interrupted before any image was saved", file=sys.stderr)
        else:
            print(f"\nminiclip: interrupted; the images embedded so far are saved in {args.out}: run the same "
                  "command again to continue", file=sys.stderr)
        raise SystemExit(130) from None
    except BaseException:
        if created and _nothing_saved(out):  # a run that failed before its first checkpoint leaves no folder
            shutil.rmtree(out, ignore_errors=True)
        raise
    for note in report.notes:
        print(f"miniclip: note: {printable(note)}", file=sys.stderr)
    index = report.index
    print(f"{args.out}: {len(index.entries)} images ({report.embedded} embedded, {report.reused} unchanged, "
          f"{report.removed} removed or changed since the last run)")
    if report.skipped:
        print(f"skipped {len(report.skipped)} unreadable file{'s' * (len(report.skipped) != 1)}:")
        for path, reason in report.skipped:
            print(f"  {printable(path)}: {printable(reason)}")
    if not index.entries:
        print(f"miniclip: warning: no readable images under {args.folder} (looked for "
              f"{', '.join(sorted(IMAGE_EXTENSIONS))})", file=sys.stderr)


def _nothing_saved(out: Path) -> bool:
    """Whether an index folder this run created holds nothing of value: no manifest with an image in it."""
    if not out.is_dir():
        return False
    try:
        return not load_index(out).entries
    except BrokenIndexError:
        return not (out / MANIFEST).exists()


def cmd_search(args: argparse.Namespace) -> None:
    if args.query is None and args.image is None:
        raise MiniclipError('give what to look for: a text ("a dog on a beach") or --image FILE')
    if args.query is not None and args.image is not None:
        raise MiniclipError('give either a text query ("a dog on a beach") or --image FILE, not both')
    if args.query is not None and not args.query.strip():
        raise MiniclipError("the text query is empty")
    if args.top < 1:
        raise MiniclipError(f"--top must be at least 1, got {args.top}")
    html = check_out(args.html, "--html", [".html", ".htm"]) if args.html else None
    sheet = check_out(args.sheet, "--sheet", [".png"]) if args.sheet else None
    if args.image is not None:
        check_images([args.image])
    # Before loading the model: a broken index fails fast. Memory-mapped: an index of a million images is
    # searched without reading it into memory (its checksum is checked up to VERIFY_LIMIT, or with --verify).
    index = load_index(args.index, mmap=True, verify=True if args.verify else None)
    if not index.entries:
        raise MiniclipError(f"{args.index}: the index holds no images")
    if not args.weights:
        args.weights = index.manifest.get("weights")
        if not args.weights:
            raise MiniclipError(f"{args.index} does not record the weights it was built with: pass --weights")
        print(f"miniclip: using the weights the index was built with: {args.weights}", file=sys.stderr)
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
        query, title = embed_text_query(model, args.query, truncate=args.truncate), args.query
    with _cluster(args) as client:
        if client is not None:
            from ..apps.cluster import scorer

            results = search(index, query, args.top, scorer=scorer(client))
        else:
            results = search(index, query, args.top)
    gone = [path for path, _ in results if not path.exists()]
    for rank, (path, score) in enumerate(results, start=1):
        print(f"{rank:3d}  {score:7.4f}  {_display(path)}{'  (no longer exists)' if path in gone else ''}")
    if gone:
        print(f"miniclip: warning: {len(gone)} of these images no longer exist{'s' * (len(gone) == 1)} on disk "
              "(moved or deleted since `miniclip index`); re-run it to update "
              f"the index", file=sys.stderr)
    if html:
        write_html(results, html, title)
        print(f"wrote {html}", file=sys.stderr)
    if sheet:
        write_contact_sheet(results, sheet, title)
        print(f"wrote {sheet}", file=sys.stderr)


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
    p.add_argument("--truncate", action="store_true",
                   help="cut a text query longer than the model's context length (77 tokens) instead of refusing it")
    p.add_argument("--verify", action="store_true",
                   help="check the embeddings' SHA-256 even for a large index (by default only up to 128 MiB; "
                        "size, header and shape are always checked)")
    p.add_argument("--cluster", metavar="ADDRESS",
                   help="score the index's blocks on a Dask cluster (tcp://host:8786 or local:N); the index must "
                        "be at the same path on every machine")
    add_model_options(p, batch=False, weights_help=WEIGHTS_HELP[:-1] + ", else the weights the index was built with)")
    p.set_defaults(func=cmd_search)
