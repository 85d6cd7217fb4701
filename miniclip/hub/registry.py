"""The published CLIP checkpoints miniclip knows by name, read from `miniclip/models.json`.

Naming scheme (shown by `miniclip models`):

    ViT-B-32                        OpenAI's weights, open_clip layout (hub repo timm/vit_base_patch32_clip_224.openai)
    ViT-B-32-hf                     the same weights, transformers layout (hub repo openai/clip-vit-base-patch32)
    ViT-B-32-laion2b_s34b_b79k      another training run: open_clip's architecture name + its pretrained tag
    ViT-B-32-laion2b_s34b_b79k-hf   ... in the transformers layout

so the bare architecture name is OpenAI's CLIP, as in openai/CLIP's `clip.load`, whose own spellings
("ViT-B/32", "ViT-L/14@336px") are accepted as aliases, as is open_clip's name + tag ("ViT-B-32-openai").
Names are matched case-insensitively. A hub repo id (`owner/name`) of a registry entry selects that entry
(its open_clip-layout one first); other repo ids are handled by miniclip/hub/download.py.

`revision`: the branch, tag, pull-request ref (`refs/pr/N`) or commit the files are fetched from. OpenAI's
transformers repos have no model.safetensors on main: their safetensors copies live on the hub's automatic
conversion pull requests, which the -hf entries pin. `sha256` and `size_bytes` (with `size_exact`) pin what
public records of the hub give; models.json's `_about` says where they come from.

A model that ships inside the package (`"packaged": "data/shapes"` in models.json, e.g. miniclip-shapes) has
no hub repo: `download.model_dir` points at that folder, so it loads by name with nothing to download.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..config import ACTIVATIONS
from ..errors import MiniclipError
from ..terminal import format_size, text_table
from ..weights import LAYOUT_FILES

REGISTRY_FILE = Path(__file__).resolve().parent / "models.json"
PACKAGE_ROOT = REGISTRY_FILE.parent.parent  # miniclip/: "packaged" folders are relative to it
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class ModelInfo:
    """One published checkpoint: where it lives on the hub and what is known about it."""

    name: str
    repo: str  # hub repo id, "owner/name"; "" for a model that ships inside the package
    layout: str  # "open_clip" or "transformers"
    weights_file: str
    config_file: str
    activation: str  # what the weights were trained with; checked against the downloaded config
    image_size: int
    size_bytes: int  # of the weights file (approximate unless size_exact)
    size_exact: bool  # size_bytes is the file's exact size, checked against the hub's before downloading
    license: str
    imagenet_top1: float | None  # zero-shot ImageNet-1k top-1, %, from open_clip's results table
    imagenet_top1_paper: float | None = None  # openai's published figure (OpenAI weights only)
    sha256: Mapping[str, str | None] = field(default_factory=dict)  # file name -> hex digest, or None if unknown
    aliases: tuple[str, ...] = ()
    description: str = ""
    revision: str = "main"  # branch, tag, pull-request ref ("refs/pr/15") or commit the files come from
    packaged: str | None = None  # a folder of the miniclip package holding the files: nothing to download

    @property
    def package_dir(self) -> Path | None:
        return None if self.packaged is None else PACKAGE_ROOT / self.packaged

    @property
    def files(self) -> tuple[str, str]:
        """The files to download, config first: the weights file's presence then means both are there."""
        return self.config_file, self.weights_file


def _parse(name: str, d: dict) -> ModelInfo:
    where = f"{REGISTRY_FILE.name}: model {name!r}"
    try:
        info = ModelInfo(name=name, repo=d["repo"], layout=d["layout"], weights_file=d["weights_file"],
                         config_file=d["config_file"], activation=d["activation"], image_size=int(d["image_size"]),
                         size_bytes=int(d["size_bytes"]), size_exact=bool(d["size_exact"]), license=d["license"],
                         imagenet_top1=d.get("imagenet_top1"), imagenet_top1_paper=d.get("imagenet_top1_paper"),
                         sha256=dict(d.get("sha256") or {}), aliases=tuple(d.get("aliases") or ()),
                         description=d.get("description", ""), revision=d.get("revision", "main"),
                         packaged=d.get("packaged"))
    except (KeyError, TypeError, ValueError) as e:
        raise MiniclipError(f"{where}: missing or malformed field {e}") from e
    if info.layout not in LAYOUT_FILES:
        raise MiniclipError(f"{where}: layout must be one of {', '.join(LAYOUT_FILES)}, got {info.layout!r}")
    weights_files, config_file = LAYOUT_FILES[info.layout]
    if info.weights_file not in weights_files or info.config_file != config_file:
        raise MiniclipError(f"{where}: the {info.layout} layout's files are {' or '.join(weights_files)} and "
                            f"{config_file}")
    if info.activation not in ACTIVATIONS:
        raise MiniclipError(f"{where}: activation must be one of {ACTIVATIONS}, got {info.activation!r}")
    if info.packaged is not None and info.repo:
        raise MiniclipError(f"{where}: a packaged model has no hub repo (repo must be empty)")
    if info.packaged is None and info.repo.count("/") != 1:
        raise MiniclipError(f"{where}: repo must be 'owner/name', got {info.repo!r}")
    for file, digest in info.sha256.items():
        if file not in info.files or not (digest is None or _SHA256.match(digest)):
            raise MiniclipError(f"{where}: sha256 of {file!r} must be null or 64 lower-case hex digits "
                                "and name one of its files")
    return info


_MODELS: dict[str, ModelInfo] | None = None


def models() -> dict[str, ModelInfo]:
    """Name -> ModelInfo, read once. The dict is the live registry: adding an entry to it (as the tests do
    for a local test hub) makes the name loadable."""
    global _MODELS
    if _MODELS is None:
        try:
            data = json.loads(REGISTRY_FILE.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise MiniclipError(f"cannot read the model registry {REGISTRY_FILE}: {e}") from e
        _MODELS = {name: _parse(name, d) for name, d in data["models"].items()}
    return _MODELS


def available_models() -> list[str]:
    """Names `miniclip.load` and `miniclip download` accept (aliases not included), as openai's clip does."""
    return list(models())


def lookup(name: str) -> ModelInfo | None:
    """The registry entry for a name, alias or hub repo id, or None."""
    key = name.strip().lower()
    for info in models().values():
        if key == info.name.lower() or key in (a.lower() for a in info.aliases):
            return info
    for info in models().values():  # a repo id: the first entry wins (open_clip layout, as download.py prefers)
        if info.repo and key == info.repo.lower():
            return info
    return None


def other_layout(info: ModelInfo) -> ModelInfo | None:
    """The same weights in the other layout (`NAME` <-> `NAME-hf`, the naming scheme above), if registered."""
    other = info.name.removesuffix("-hf") if info.name.endswith("-hf") else info.name + "-hf"
    found = models().get(other)
    return found if found is not None and found.layout != info.layout else None


def format_table(downloaded: Mapping[str, bool] | None = None) -> str:
    """The registry as a plain-text table; `downloaded` adds a column saying which are on disk."""
    header = ["name", "layout", "hub repo (@revision)", "size", "ImageNet", "licence"]
    rows = []
    for info in models().values():
        size = ("" if info.size_exact else "~") + format_size(info.size_bytes)
        top1 = "" if info.imagenet_top1 is None else f"{info.imagenet_top1:.1f}%"
        repo = info.repo if info.revision == "main" else f"{info.repo}@{info.revision}"
        rows.append([info.name, info.layout, repo or "(ships with miniclip)", size, top1, info.license])
        if downloaded is not None:
            rows[-1].append("yes" if downloaded.get(info.name) else "")
    if downloaded is not None:
        header.append("on disk")
    return text_table([header, *rows])
