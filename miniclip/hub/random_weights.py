"""Seeded random CLIP weights in any architecture, written as a downloaded checkpoint would look.

    miniclip random-weights ViT-B-32 random-vit-b-32/ [--layout open_clip|transformers] [--seed 0]

For trying every command without a network (the outputs are meaningless: the files say so, and loading
them warns), for the benchmarks (speed does not depend on the values), and for the tests, whose committed
PyTorch reference outputs were computed from these very values (tests/seeded.py): so the generator below
must never change. It is NumPy's legacy `RandomState`, whose streams are frozen across NumPy versions,
seeded per tensor from (seed, tensor name), so that one tensor's values do not depend on the others'.
"""

from __future__ import annotations

import json
import os
import warnings
import zlib
from pathlib import Path

import numpy as np

from ..config import CLIPConfig
from ..safetensors_file import read_metadata, write_safetensors
from ..store import atomic_write_bytes
from ..weights import _HF_BLOCK, _HF_TOP, _HF_TOWERS, _HF_TRANSPOSED, LAYOUT_FILES, expected_shapes

RANDOM_KEY = "miniclip.random_weights"  # in the safetensors header's __metadata__: the seed it was made with
RANDOM_NOTE = "random weights: outputs are meaningless"
LAYOUTS = {layout: (names[0], config) for layout, (names, config) in LAYOUT_FILES.items()}  # -> the two file names


def _init(name: str, shape: tuple[int, ...]) -> tuple[float, float]:
    """(mean, std) per kind of tensor: q/k/v projections large enough that attention is far from uniform
    (scores of std ~2), so that masking and pooling mistakes change the outputs the tests compare."""
    fan_in = shape[-1] if len(shape) > 1 else 1
    if name.endswith(("ln_1.weight", "ln_2.weight", "ln_pre.weight", "ln_post.weight", "ln_final.weight")):
        return 1.0, 0.2
    if name.endswith("in_proj_weight"):
        return 0.0, 1.5 / np.sqrt(fan_in)
    if name == "visual.conv1.weight":
        return 0.0, 1.0 / np.sqrt(np.prod(shape[1:]))
    if name.endswith("bias"):
        return 0.0, 0.05
    if name in ("visual.proj", "text_projection"):
        return 0.0, 1.0 / np.sqrt(shape[0])
    if name in ("visual.class_embedding", "token_embedding.weight"):
        return 0.0, 0.5
    if name.endswith("positional_embedding"):
        return 0.0, 0.2
    return 0.0, 1.0 / np.sqrt(fan_in)


def random_params(cfg: CLIPConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """Every tensor of the architecture (OpenAI names and orientation, as weights.py maps checkpoints to),
    float32, uniform with the mean and std of `_init`, deterministic in (seed, name); logit_scale is the
    trained value, log(100)."""
    params = {}
    for name, shape in expected_shapes(cfg).items():
        if name == "logit_scale":
            params[name] = np.array(np.log(100.0), dtype=np.float32)
            continue
        mean, std = _init(name, shape)
        rng = np.random.RandomState((seed * 1_000_003 + zlib.crc32(name.encode())) % 2**32)
        uniform = rng.random_sample(int(np.prod(shape))).astype(np.float32) * 2 - 1  # U(-1, 1), std 1/sqrt 3
        params[name] = (mean + uniform * np.float32(std * np.sqrt(3.0))).astype(np.float32).reshape(shape)
    return params


def to_transformers(params: dict[str, np.ndarray], cfg: CLIPConfig) -> dict[str, np.ndarray]:
    """The internal representation -> transformers `CLIPModel` names: the inverse of
    weights.from_transformers (q/k/v split again, the two projections transposed back), from its tables."""
    out = {hf: params[ours] for hf, ours in _HF_TOP.items()}
    out |= {hf: np.ascontiguousarray(params[ours].T) for hf, ours in _HF_TRANSPOSED.items()}
    for hf_tower, our_tower in _HF_TOWERS.items():
        layers = cfg.vision_layers if our_tower.startswith("visual") else cfg.text_layers
        for i in range(layers):
            for hf, ours in _HF_BLOCK.items():
                out[f"{hf_tower}.{i}.{hf}"] = params[f"{our_tower}.{i}.{ours}"]
            for kind in ("weight", "bias"):
                q, k, v = np.split(params[f"{our_tower}.{i}.attn.in_proj_{kind}"], 3)
                for letter, part in zip("qkv", (q, k, v), strict=True):
                    out[f"{hf_tower}.{i}.self_attn.{letter}_proj.{kind}"] = np.ascontiguousarray(part)
    return out


def config_file(cfg: CLIPConfig, layout: str) -> dict:
    """The config file a checkpoint of this architecture comes with: transformers' config.json or
    open_clip's open_clip_config.json (whose absent `quick_gelu` means exact GELU, as open_clip reads it)."""
    if layout == "transformers":
        tower = {"hidden_act": cfg.activation, "layer_norm_eps": cfg.layer_norm_eps, "projection_dim": cfg.embed_dim}
        return {"architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": cfg.embed_dim,
                "text_config": {**tower, "hidden_size": cfg.text_width, "intermediate_size": cfg.text_mlp_dim,
                                "num_attention_heads": cfg.text_heads, "num_hidden_layers": cfg.text_layers,
                                "max_position_embeddings": cfg.context_length, "vocab_size": cfg.vocab_size},
                "vision_config": {**tower, "hidden_size": cfg.vision_width, "intermediate_size": cfg.vision_mlp_dim,
                                  "num_attention_heads": cfg.vision_heads, "num_hidden_layers": cfg.vision_layers,
                                  "image_size": cfg.image_size, "patch_size": cfg.patch_size, "num_channels": 3}}
    if layout != "open_clip":
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    model_cfg: dict = {
        "embed_dim": cfg.embed_dim,
        "vision_cfg": {"image_size": cfg.image_size, "layers": cfg.vision_layers, "width": cfg.vision_width,
                       "patch_size": cfg.patch_size, "head_width": cfg.vision_width // cfg.vision_heads,
                       "mlp_ratio": cfg.vision_mlp_dim / cfg.vision_width},
        "text_cfg": {"context_length": cfg.context_length, "vocab_size": cfg.vocab_size, "width": cfg.text_width,
                     "heads": cfg.text_heads, "layers": cfg.text_layers,
                     "mlp_ratio": cfg.text_mlp_dim / cfg.text_width},
    }
    if cfg.activation == "quick_gelu":
        model_cfg["quick_gelu"] = True
    return {"model_cfg": model_cfg}


def write_random_weights(cfg: CLIPConfig, directory: str | os.PathLike, layout: str = "open_clip",
                         seed: int = 0) -> Path:
    """Write seeded random weights of `cfg` into `directory` with the layout's file names and config file,
    marked random in the safetensors header (`is_random`). Refuses to replace existing files. Each file is
    written atomically (config first, as downloads do): an interrupted run leaves no half-written file.
    Returns the weights file."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    directory = Path(directory).expanduser()
    if directory.exists() and not directory.is_dir():
        raise FileExistsError(f"{directory}: exists and is not a folder")
    weights_name, config_name = LAYOUTS[layout]
    for name in (weights_name, config_name):
        if (directory / name).exists():
            raise FileExistsError(f"{directory / name}: exists; choose another folder (nothing was written)")
    params = random_params(cfg, seed)
    tensors = to_transformers(params, cfg) if layout == "transformers" else params
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(directory / config_name, (json.dumps(config_file(cfg, layout), indent=2) + "\n").encode())
    write_safetensors(directory / weights_name, tensors, metadata={"format": "pt", RANDOM_KEY: str(seed)})
    return directory / weights_name


def is_random(weights_file: str | os.PathLike) -> bool:
    """Whether a .safetensors file was written by `write_random_weights` (its copies by `miniclip convert`
    keep the mark)."""
    path = Path(weights_file)
    return path.suffix == ".safetensors" and RANDOM_KEY in read_metadata(path)


def warn_if_random(weights_file: str | os.PathLike, stacklevel: int = 2) -> None:
    if is_random(weights_file):
        warnings.warn(RANDOM_NOTE, stacklevel=stacklevel + 1)
