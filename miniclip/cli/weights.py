"""Commands about weights: `miniclip models`, `download`, `convert`, `verify`."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace

from ..apps.verify import verify
from ..backends import BACKENDS
from ..config import ACTIVATIONS, ARCHITECTURES
from ..errors import MiniclipError, WeightsError
from ..hub.convert import DTYPES, convert
from ..hub.download import DEFAULT_DEADLINE, DEFAULT_RETRIES, DEFAULT_TIMEOUT, download, is_downloaded, resolve_source
from ..hub.random_weights import LAYOUTS, RANDOM_NOTE, warn_if_random, write_random_weights
from ..hub.registry import format_table, models
from ..safetensors_file import checkpoint_files
from ..store import weights_dir
from ..terminal import format_size
from ..weights import find_weights_file
from .common import NO_WEIGHTS_ADVICE, WEIGHTS_ENV, WEIGHTS_HELP, check_weights_name


def cmd_models(args: argparse.Namespace) -> None:
    print(format_table({name: is_downloaded(info) for name, info in models().items()}))
    print()
    print("ImageNet: zero-shot top-1 as measured by open_clip (docs/openclip_results.csv in the open_clip "
          "repository, github.com/mlfoundations/open_clip). ~: approximate size (float32).")
    print("Names: ARCH = OpenAI weights (open_clip layout), ARCH-hf = the same in the transformers layout; "
          "openai's 'ViT-B/32'-style names work too.")
    print(f"Files go to {weights_dir()} (set $MINICLIP_HOME to change it). Any hub repo id (owner/name) can be "
          "downloaded too.")


def add_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the published CLIP models miniclip can download by name")
    p.set_defaults(func=cmd_models)


def cmd_download(args: argparse.Namespace) -> None:
    for name in args.names:
        path = download(name, progress=False if args.quiet else None, timeout=args.timeout, retries=args.retries,
                        deadline=args.deadline or None)
        print(f"{name}: {path}")
    if not args.quiet and len(args.names) == 1:
        print(f"load it with miniclip.load({args.names[0]!r}) or --weights {path}", file=sys.stderr)


def add_download(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("download", help="download published weights by model name or hub repo id",
                       description="Download a model from `miniclip models` (e.g. ViT-B-32) or any hub repo id "
                       "(owner/name) holding CLIP safetensors, into $MINICLIP_HOME, the weights/ folder of a "
                       f"source checkout, or ~/.cache/miniclip (here: {weights_dir()}). Honours $HF_ENDPOINT, "
                       "$HF_TOKEN (or the token file of `huggingface-cli login`) and $HF_HUB_OFFLINE. An interrupted "
                       "download resumes when run again.")
    p.add_argument("names", nargs="+", metavar="NAME", help="model name (see `miniclip models`) or owner/name")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                   help=f"seconds to wait for the server before retrying (default {DEFAULT_TIMEOUT:g})")
    p.add_argument("--retries", type=int, default=DEFAULT_RETRIES,
                   help=f"resumed attempts after an interruption (default {DEFAULT_RETRIES})")
    p.add_argument("--deadline", type=float, default=DEFAULT_DEADLINE, metavar="SECONDS",
                   help=f"give up on a file after this long, all attempts together, keeping what arrived for the "
                        f"next run (default {DEFAULT_DEADLINE:g}; 0: no limit)")
    p.set_defaults(func=cmd_download)


def cmd_convert(args: argparse.Namespace) -> None:
    check_weights_name(args.src)
    src_file = find_weights_file(resolve_source(args.src))
    warn_if_random(src_file)
    out = convert(src_file, args.dst, args.dtype, overwrite=args.force)
    before, after = (sum(f.stat().st_size for f in checkpoint_files(path)) for path in (src_file, out))
    print(f"wrote {out}: {format_size(after)} in {args.dtype} (was {format_size(before)}, "
          f"{after / before:.0%}); load it as before, miniclip computes in float32")


def add_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="write a float16/bfloat16 copy of a checkpoint (half the disk)",
                       description="Convert every floating-point tensor of a .safetensors checkpoint to float16 "
                       "or bfloat16, keeping its layout and names, and copy its config file beside the copy.")
    p.add_argument("src", metavar="SRC", help="a .safetensors file, a directory holding one, or a model name")
    p.add_argument("dst", metavar="DST", help="output directory (the file keeps its name) or .safetensors path")
    p.add_argument("--dtype", choices=list(DTYPES), default="float16",
                   help="float16 (default: 10-bit mantissa, range to 65504) or bfloat16 (8-bit mantissa, "
                        "float32's range)")
    p.add_argument("--force", action="store_true", help="replace the output files if they exist")
    p.set_defaults(func=cmd_convert)


def cmd_verify(args: argparse.Namespace) -> None:
    if not args.weights:
        raise MiniclipError(f"no weights given: pass --weights or set ${WEIGHTS_ENV}; {NO_WEIGHTS_ADVICE}")
    check_weights_name(args.weights)
    results = verify(args.weights, args.images, args.texts, backends=args.backends, activation=args.activation,
                     reference_fixture=args.reference_fixture, use_torch=not args.no_torch,
                     save_reference=args.save_reference)
    if not results:
        raise MiniclipError("nothing to compare with: install torch and transformers/open_clip, pass "
                            "--reference-fixture, or use OpenAI's ViT-B/32 with the default inputs")
    failed = [r for r in results if not r.ok]
    if failed:
        raise WeightsError(f"{len(failed)} of {len(results)} comparisons exceed the tolerances: "
                           + ", ".join(f"{r.reference} / {r.backend}" for r in failed))


def add_verify(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("verify", help="compare miniclip's outputs with the reference implementations",
                       description="Run every backend and the references that apply (torch: transformers or "
                       "open_clip if installed; a stored fixture; openai's published CLIP.png example for "
                       "ViT-B/32) on the same inputs and print the worst differences.")
    p.add_argument("--weights", default=os.environ.get(WEIGHTS_ENV), help=WEIGHTS_HELP)
    p.add_argument("--images", nargs="+", metavar="IMAGE", help="images to compare on (default: CLIP.png)")
    p.add_argument("--texts", nargs="+", metavar="TEXT", help="texts (default: a diagram, a dog, a cat)")
    p.add_argument("--backends", nargs="+", choices=list(BACKENDS), help="default: all")
    p.add_argument("--activation", choices=ACTIVATIONS, help="only for weights without a config file")
    p.add_argument("--reference-fixture", metavar="NPZ", help="compare with stored reference outputs")
    p.add_argument("--save-reference", metavar="NPZ", help="store the torch reference's inputs and outputs")
    p.add_argument("--no-torch", action="store_true", help="skip the torch reference even if it is installed")
    p.set_defaults(func=cmd_verify)


def cmd_random_weights(args: argparse.Namespace) -> None:
    cfg = ARCHITECTURES[args.arch]
    if args.activation:
        cfg = replace(cfg, activation=args.activation)
    path = write_random_weights(cfg, args.dir, layout=args.layout, seed=args.seed)
    size = sum((path.parent / name).stat().st_size for name in LAYOUTS[args.layout])
    print(f"wrote {path} and its config ({format_size(size)}): {args.arch}'s shapes, {args.layout} layout, seed "
          f"{args.seed}; try any command with --weights {path.parent}")
    print(f"miniclip: note: {RANDOM_NOTE}; they exercise every command, for real results see `miniclip models`",
          file=sys.stderr)


def add_random_weights(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("random-weights", help="write seeded random weights, to try every command offline",
                       description="Write seeded random weights of a CLIP architecture into DIR, with its config "
                       "file, as a downloaded checkpoint would look: every command then runs on them without a "
                       "network. Their outputs are meaningless (the files are marked random, and every command "
                       "that loads them says so).")
    p.add_argument("arch", metavar="ARCH", choices=list(ARCHITECTURES),
                   help=f"architecture: {', '.join(ARCHITECTURES)}")
    p.add_argument("dir", metavar="DIR", help="output folder (created; existing weights in it are not replaced)")
    p.add_argument("--layout", choices=list(LAYOUTS), default="open_clip",
                   help="open_clip (open_clip_model.safetensors + open_clip_config.json, the default) or "
                        "transformers (model.safetensors + config.json)")
    p.add_argument("--activation", choices=ACTIVATIONS,
                   help="the MLP activation written into the config (default: quick_gelu, as OpenAI's CLIP)")
    p.add_argument("--seed", type=int, default=0, help="seed of the values (default 0)")
    p.set_defaults(func=cmd_random_weights)


def add_commands(sub: argparse._SubParsersAction) -> None:
    for add in (add_models, add_download, add_convert, add_verify, add_random_weights):
        add(sub)
