"""The `miniclip` command (also `python -m miniclip`). Each module here adds its commands; they call the
library (the model, apps/, hub/) and nothing in the library imports from here.

    miniclip classify IMAGE... --labels "a diagram" "a dog" --weights PATH
    miniclip embed --images IMAGE... --out image_features.npy --weights PATH
    miniclip embed --texts "a dog" "a cat" --out text_features.npy --weights PATH
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence

from ..errors import MiniclipError
from . import classify, explain, probe, search, weights
from .common import WEIGHTS_ENV  # noqa: F401  (documented: the default of --weights)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="miniclip", description="CLIP in plain NumPy.")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in (classify, search, probe, weights, explain):
        module.add_commands(sub)
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
