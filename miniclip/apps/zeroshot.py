"""Zero-shot classification with prompt ensembling (CLIP paper, sections 3.1.2 and 3.1.4).

CLIP classifies an image among C classes without training: each class name is written into a sentence
("a photo of a {}."), the text encoder turns the sentences into vectors, and the class whose vector has the
largest cosine similarity with the image's wins. The text vectors are the weights of a linear classifier
that the text encoder "writes" (section 3.1.2)::

    weights = zero_shot_classifier(model, ["dog", "cat"], templates("imagenet"))   # [E, C]
    probs = classify(model, pixels, weights)                                          # [B, C]

Prompt ensembling (section 3.1.4): one sentence per class is a noisy estimate of where "the concept"
sits in the embedding space; the paper embeds the class name in many sentences (80 templates for
ImageNet: "a bad photo of a {}.", "a sculpture of a {}.", ...) and averages them in the embedding space,
so the ensemble is a single [E, C] matrix that costs nothing extra at classification time. openai's
notebook L2-normalizes every sentence's embedding, averages them per class and renormalizes the mean;
so does this module. On ImageNet the paper reports +1.3 points from the single default template "A photo
of a {label}." over bare class names, and +3.5 more from the 80-template ensemble: almost 5 in all.
The matrix is built in text batches and cached on disk, since 1000 classes x 80 templates is 80,000
sentences to encode.

The 80 templates and 1000 class names are openai/CLIP's (notebooks/Prompt_Engineering_for_ImageNet.ipynb,
MIT license), shipped as ``miniclip/data/imagenet_prompts.json``. The class list keeps openai's two
duplicated names ("missile" and "sunglasses" each name two ImageNet classes) so that column i is
ImageNet class i.

The model-identity fingerprint and the atomic file writes at the end of this module are shared with
``search.py``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path

import numpy as np

from ..errors import MiniclipError
from ..model import normalize
from ..ops import softmax
from ..store import atomic_write_bytes, cache_dir, npy_bytes
from ..tokenizer import tokenize

__all__ = [
    "SIMPLE_TEMPLATES",
    "classify",
    "encode_texts",
    "imagenet_classes",
    "imagenet_templates",
    "load_templates",
    "model_fingerprint",
    "prompts_for",
    "softmax",
    "zero_shot_classifier",
]

#: The single default prompt of section 3.1.4: "A photo of a {label}." improved ImageNet accuracy by 1.3
#: points over the bare class name. openai/CLIP's README spells it in lower case with a full stop.
SIMPLE_TEMPLATES: tuple[str, ...] = ("a photo of a {}.",)



# --------------------------------------------------------------------------------------------------
# Templates and class names
# --------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _imagenet_data() -> dict:
    with resources.files("miniclip").joinpath("data/imagenet_prompts.json").open("r", encoding="utf-8") as f:
        return json.load(f)


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet class names as openai wrote them for zero-shot use, in class-id order."""
    return list(_imagenet_data()["classes"])


def imagenet_templates() -> list[str]:
    """The 80 prompt templates openai used for ImageNet (section 3.1.4), each with one ``{}``."""
    return list(_imagenet_data()["templates"])


def load_templates(spec: str | os.PathLike | Sequence[str] | None) -> list[str] | None:
    """Templates from a name or a file: ``"imagenet"`` (80), ``"simple"`` ("a photo of a {}."), a path to a
    text file with one template per line (blank lines and lines starting with ``#`` are skipped), or a list
    of templates. ``None`` means "no templates": class names are used verbatim as the prompts.

    Every template must contain ``{}``, where the class name goes.
    """
    if spec is None:
        return None
    if isinstance(spec, str) and spec == "imagenet":
        return imagenet_templates()
    if isinstance(spec, str) and spec == "simple":
        return list(SIMPLE_TEMPLATES)
    if isinstance(spec, (str, os.PathLike)):
        path = Path(spec)
        if not path.is_file():
            raise MiniclipError(f"--templates: {spec!r} is neither 'imagenet', 'simple' nor an existing file")
        templates = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if "{}" not in line:
                raise MiniclipError(f"{path}, line {number}: template {line!r} has no {{}} where the class "
                                    "name goes, e.g. 'a photo of a {}.'")
            templates.append(line)
        if not templates:
            raise MiniclipError(f"{path}: no templates found (one per line, each with {{}})")
        return templates
    templates = [str(t) for t in spec]
    if not templates:
        raise MiniclipError("the template list is empty")
    for t in templates:
        if "{}" not in t:
            raise MiniclipError(f"template {t!r} has no {{}} where the class name goes, e.g. 'a photo of a {{}}.'")
    return templates


def prompts_for(classnames: Sequence[str], templates: Sequence[str] | None) -> list[list[str]]:
    """The sentences of every class: ``prompts[c][t]`` is template t with class name c filled in.

    ``str.replace`` rather than ``str.format`` so a template file may contain other braces."""
    if templates is None:
        return [[name] for name in classnames]
    return [[t.replace("{}", name) for t in templates] for name in classnames]


# --------------------------------------------------------------------------------------------------
# The classifier
# --------------------------------------------------------------------------------------------------


def encode_texts(model, texts: Sequence[str], batch_size: int = 256,
                 progress: Callable[[int, int], None] | None = None, truncate: bool = False) -> np.ndarray:  # -> [N, E]
    """Text features (not normalized) of many texts, ``batch_size`` at a time, so 80,000 prompts never
    become one [80000, 77, D] activation. ``truncate``: as for :func:`miniclip.tokenize`."""
    if batch_size < 1:
        raise MiniclipError(f"batch size must be at least 1, got {batch_size}")
    out = []
    for start in range(0, len(texts), batch_size):
        chunk = texts[start:start + batch_size]
        out.append(model.encode_text(tokenize(list(chunk), model.config.context_length, truncate=truncate)))
        if progress is not None:
            progress(start + len(chunk), len(texts))
    if not out:
        return np.zeros((0, model.config.embed_dim), np.float32)
    return np.concatenate(out).astype(np.float32, copy=False)


def zero_shot_classifier(model, classnames: Sequence[str], templates: Sequence[str] | str | None = None, *,
                         batch_size: int = 256, cache: bool | str | os.PathLike = True,
                         progress: Callable[[int, int], None] | None = None,
                         truncate: bool = False) -> np.ndarray:  # -> [E, C]
    """The zero-shot classifier's weights, float32 [E, C], every column of unit L2 norm.

    Column c is the prompt ensemble of class c (section 3.1.4): every template filled in with the class
    name, each sentence embedded and L2-normalized, the normalized embeddings averaged, and the average
    renormalized. Normalizing each sentence first gives every template an equal vote whatever the length
    of its raw embedding; renormalizing the mean puts the class back on the unit sphere, where cosine
    similarity is a dot product. With ``templates=None`` each class name is its own single prompt.

    ``templates`` may also be a name or a file for :func:`load_templates`. ``cache``: True stores the
    result in ``cache_dir() / "zeroshot"``, a path stores it there, False never touches the disk. The cache key is
    a hash of the model's fingerprint and every prompt, so a different model or prompt list never reads a
    stale entry. ``truncate``: cut prompts longer than the context length, as :func:`miniclip.tokenize` does.
    """
    if isinstance(templates, (str, os.PathLike)):
        templates = load_templates(templates)
    classnames = [str(c) for c in classnames]
    if not classnames:
        raise MiniclipError("no class names given")
    prompts = prompts_for(classnames, templates)

    path = None
    if cache:
        directory = cache_dir() / "zeroshot" if cache is True else Path(cache)
        cut = {"truncate": True} if truncate else {}  # truncated prompts embed differently (keys without: as before)
        key = hashlib.sha256(json.dumps({"format": 1, "model": model_fingerprint(model), "prompts": prompts, **cut},
                                        ensure_ascii=False).encode()).hexdigest()[:32]
        path = directory / f"zeroshot-{key}.npy"
        cached = _read_cached(path, (model.config.embed_dim, len(classnames)))
        if cached is not None:
            return cached

    flat = [p for class_prompts in prompts for p in class_prompts]
    owner = np.repeat(np.arange(len(classnames)), [len(p) for p in prompts])  # class of each flat prompt
    embeddings = normalize(encode_texts(model, flat, batch_size, progress, truncate))  # [N_prompts, E], unit rows
    sums = np.zeros((len(classnames), embeddings.shape[1]), np.float64)
    np.add.at(sums, owner, embeddings)  # per-class sum of unit vectors (mean up to a positive factor)
    means = sums / np.array([len(p) for p in prompts], np.float64)[:, None]
    weights = normalize(means).astype(np.float32).T.copy()  # [E, C]

    if path is not None:
        try:
            atomic_write_bytes(path, npy_bytes(weights))
        except OSError as e:  # a read-only home must not break classification
            print(f"miniclip: warning: could not cache the zero-shot weights in {path}: {e}", file=sys.stderr)
    return weights


def classify(model, images: np.ndarray, classifier: np.ndarray, batch_size: int = 16) -> np.ndarray:  # [B, C]
    """Class probabilities of preprocessed images [B, 3, S, S] under a zero-shot ``classifier`` [E, C]:
    softmax over classes of exp(logit_scale) x cosine similarity, the same logits as ``model(images, texts)``
    (section 2.5, Figure 3)."""
    images = np.asarray(images)
    if len(images) == 0:
        return np.zeros((0, classifier.shape[1]), np.float32)
    features = np.concatenate([model.encode_image(images[i:i + batch_size])
                               for i in range(0, len(images), batch_size)])
    return softmax(np.exp(model.logit_scale) * normalize(features) @ classifier)


# --------------------------------------------------------------------------------------------------
# Model identity and on-disk files (shared with search.py)
# --------------------------------------------------------------------------------------------------


def _leaves(node, prefix: str = ""):
    if isinstance(node, dict):
        for k in sorted(node):
            yield from _leaves(node[k], f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            yield from _leaves(v, f"{prefix}.{i}")
    else:
        yield prefix, node


def model_fingerprint(model) -> str:
    """A short hex string that changes when the model's weights or architecture do.

    Hashes the config and, for every weight tensor, its name, shape and 64 values spread over it: any two
    published or fine-tuned checkpoints differ there, and it reads a few kilobytes instead of hashing
    hundreds of megabytes. It is the same for the same weights whatever the file's path, layout or backend,
    so a moved checkpoint keeps its caches and indexes. Computed once per model object.
    """
    cached = getattr(model, "_miniclip_fingerprint", None)
    if cached is not None:
        return cached
    h = hashlib.sha256(json.dumps(_config_dict(model.config), sort_keys=True).encode())
    try:
        leaves = list(_leaves(model.params))
        # Hash the weights as NumPy sees them: a GPU backend's arrays are brought back first, so the same
        # weights fingerprint the same on every backend (an index built with numpy is searched with cupy).
        to_host = getattr(getattr(model, "ops", None), "to_host", np.asarray)
        # A backend may also hold weights in its own form (the numba backend's packed panels): `take` reads
        # values by their flat index in the checkpoint's tensor, and `source_shape` is that tensor's shape.
        for name, value in leaves:
            picks = np.linspace(0, max(value.size - 1, 0), num=min(value.size, 64)).astype(np.int64)
            h.update(f"{name}:{tuple(getattr(value, 'source_shape', value.shape))}:".encode())
            h.update(np.ascontiguousarray(to_host(value.take(picks)), dtype="<f4").tobytes())
        if not leaves:
            raise TypeError("no parameters")
    except (AttributeError, TypeError, ValueError):
        # A model object without NumPy-readable parameters (e.g. on another device): fingerprint what it
        # computes instead. Rounded to 3 decimals so that backends differing in float rounding agree.
        S = model.config.image_size
        ramp = np.linspace(-1.5, 1.5, 3 * S * S, dtype=np.float32).reshape(1, 3, S, S)
        text = normalize(model.encode_text(tokenize(["a photo of a dog."], model.config.context_length)))
        image = normalize(model.encode_image(ramp))
        h.update(np.round(np.concatenate([text, image]).astype(np.float64), 3).tobytes())
    fingerprint = h.hexdigest()[:24]
    try:
        model._miniclip_fingerprint = fingerprint
    except AttributeError:  # a model class with __slots__: just recompute next time
        pass
    return fingerprint


def _config_dict(config) -> dict:
    if hasattr(config, "to_dict"):
        return config.to_dict()
    return dict(vars(config))


def _read_cached(path: Path, shape: tuple[int, int]) -> np.ndarray | None:
    """A cached classifier if the file is present and sane; anything odd means "recompute"."""
    try:
        weights = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    if weights.shape != shape or weights.dtype != np.float32 or not np.all(np.isfinite(weights)):
        return None
    return weights
