"""Where miniclip keeps files it computes (not the weights: see hub.cache_dir)."""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "MINICLIP_HOME"


def cache_dir() -> Path:
    """``$MINICLIP_HOME/cache``, else ``$XDG_CACHE_HOME/miniclip``, else ``~/.cache/miniclip``."""
    if os.environ.get(HOME_ENV):
        return Path(os.environ[HOME_ENV]) / "cache"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "miniclip"
