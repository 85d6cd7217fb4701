"""miniclip: CLIP (Radford et al., 2021) in plain NumPy, with openai/CLIP's API.

    model, preprocess = miniclip.load("path/to/weights", backend="numpy")
    tokens = miniclip.tokenize(["a diagram", "a dog"])
    logits_per_image, logits_per_text = model(np.stack([preprocess(image)]), tokens)
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

import numpy as np

from .backends import get_backend
from .config import CLIPConfig
from .errors import (
    BrokenIndexError,
    CudaUnavailableError,
    DownloadError,
    ImageError,
    InputError,
    Locked,
    MiniclipError,
    TokenizerError,
    WeightsError,
)
from .hub.download import resolve_model
from .hub.random_weights import warn_if_random
from .hub.registry import available_models
from .model import CLIP
from .preprocess import preprocess as _preprocess
from .tokenizer import decode, tokenize
from .weights import find_weights_file, load_weights

__all__ = ["CLIP", "BrokenIndexError", "CLIPConfig", "CudaUnavailableError", "DownloadError", "ImageError",
           "InputError", "Locked", "MiniclipError", "TokenizerError", "WeightsError", "available_models", "decode",
           "load", "tokenize"]
__version__ = "0.1.0"


def load(source: str | os.PathLike, backend: str = "numpy", activation: str | None = None, *,
         download: bool = True, threads: int | None = None) -> tuple[CLIP, Callable[..., np.ndarray]]:
    """Load CLIP weights from a .safetensors file or a directory holding one, in the transformers layout
    (model.safetensors + config.json) or the OpenAI/open_clip layout (open_clip_model.safetensors +
    optional open_clip_config.json). Returns (model, preprocess), as openai's clip.load does.

    `source` may also be a published model's name (`miniclip.available_models()`, e.g. "ViT-B-32") or a
    Hugging Face hub repo id ("owner/name"): it is downloaded on first use (see miniclip/hub/download.py), unless
    `download=False`, which raises DownloadError saying where to put the files. Local paths win over names.

    `activation` ("quick_gelu" for OpenAI weights, "gelu" for LAION-trained ones) is only needed when no
    config file sits beside the weights (or it does not say); without either, "quick_gelu" is assumed with a
    warning. For a published model's name, the registry supplies it.

    `backend`: "numpy" (the reference), "numba" (fused CPU kernels), "cupy" (NVIDIA GPU) or "auto" (numba
    when available).
    `threads`: threads for the numba kernels (default: NUMBA_NUM_THREADS, i.e. all cores).
    """
    ops = get_backend(backend, threads)
    path, activation = resolve_model(source, activation, allow_download=download)
    weights_file = find_weights_file(path)
    params, config = load_weights(weights_file, activation=activation)
    warn_if_random(weights_file)  # written by `miniclip random-weights`: say so wherever they are used
    return CLIP(params, config, ops), functools.partial(_preprocess, image_size=config.image_size)
