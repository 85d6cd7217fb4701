"""The `miniclip` command (also `python -m miniclip`). Each module here adds its commands; they call the
library (the model, apps/, hub/) and nothing in the library imports from here.

    miniclip classify IMAGE... --labels "a diagram" "a dog" --weights PATH
    miniclip embed --images IMAGE... --out image_features.npy --weights PATH
    miniclip embed --texts "a dog" "a cat" --out text_features.npy --weights PATH

main() is the one place where a run ends: an error is one line on stderr and exit status 1, Ctrl-C one line
and 130 (every file is written atomically, so nothing is left half-written), a closed pipe (`| head`) a
quiet exit.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Sequence

from PIL import Image

from .. import __version__
from ..errors import MiniclipError
from . import classify, explain, probe, search, weights
from .common import WEIGHTS_ENV  # noqa: F401  (documented: the default of --weights)

# The library's advice names Python arguments; on the command line the same advice is an option.
# (tests/test_cli_edges.py makes the library raise each of these and checks the translation happens.)
CLI_ADVICE = {
    "pass truncate=True": "pass --truncate",
    "pass max_pixels to change the limit": "pass --max-pixels N (or set $MINICLIP_MAX_PIXELS) to change the limit",
    "pass activation='gelu'": "pass --activation gelu",
    "drop the argument to use the config's": "drop --activation to use the config's",
}


def for_the_command_line(message: str) -> str:
    for python, option in CLI_ADVICE.items():
        message = message.replace(python, option)
    return message


def _describe(e: Exception) -> str:
    """An error as one line: an operating-system error about a file as "path: reason", not "[Errno 2] ..."."""
    if isinstance(e, OSError) and not isinstance(e, MiniclipError) and e.strerror and e.filename is not None:
        return f"{e.filename}: {e.strerror}"
    return str(e)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="miniclip", description="CLIP in plain NumPy.")
    parser.add_argument("--version", action="version", version=f"miniclip {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in (classify, search, probe, weights, explain):
        module.add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def show_warning(message, category, filename, lineno, file=None, line=None):
        print(f"miniclip: warning: {for_the_command_line(str(message))}", file=sys.stderr)

    pixel_limit = Image.MAX_IMAGE_PIXELS  # --max-pixels changes it for this run only (main() may run in-process)
    with warnings.catch_warnings():
        warnings.showwarning = show_warning
        try:
            args.func(args)
            sys.stdout.flush()  # a closed pipe shows here, inside the try, rather than at exit
        except BrokenPipeError:
            # The reader went away (`miniclip trace | head -1`): stop quietly, as other Unix tools do. Python
            # would report the pipe again when flushing stdout at exit, so stdout is pointed at /dev/null.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 141  # 128 + SIGPIPE, what a shell reports for a tool killed by the closed pipe
        except KeyboardInterrupt:
            fresh_line = "\n" if sys.stderr.isatty() else ""  # after the terminal's ^C or a progress bar
            print(f"{fresh_line}miniclip: interrupted", file=sys.stderr)
            return 130  # 128 + SIGINT
        except (MiniclipError, OSError) as e:
            print(f"miniclip: error: {for_the_command_line(_describe(e))}", file=sys.stderr)
            return 1
        finally:
            Image.MAX_IMAGE_PIXELS = pixel_limit
    return 0
