"""Seeded random CLIP weights in the real architectures, written in both file layouts.

The values come from the package's one generator, miniclip/hub/random_weights.py (`miniclip random-weights`).
Used by the fixture generator (tests/make_model_fixtures.py, with PyTorch) and by the tests (without), so
both see bit-identical weights without committing hundreds of megabytes.

The mapping to transformers names here is written independently of miniclip/weights.py on purpose: the
fixture generator feeds these files to transformers itself, so a wrong name here fails loudly there.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from miniclip.config import CLIPConfig
from miniclip.hub.random_weights import random_params


@dataclass(frozen=True)
class Arch:
    name: str
    config: CLIPConfig
    layout: str  # "transformers" or "open_clip": the layout its reference fixture was made from
    seed: int


def _cfg(**kw) -> CLIPConfig:
    return CLIPConfig(**kw)


ARCHS = {a.name: a for a in [
    # OpenAI ViT-B/32: QuickGELU, transformers layout (as openai/clip-vit-base-patch32)
    Arch("vit_b_32", _cfg(embed_dim=512, image_size=224, patch_size=32, vision_width=768, vision_layers=12,
                          vision_heads=12, vision_mlp_dim=3072, context_length=77, vocab_size=49408,
                          text_width=512, text_layers=12, text_heads=8, text_mlp_dim=2048,
                          activation="quick_gelu"), "transformers", 32),
    # ViT-B/16 with exact GELU (LAION-style), open_clip layout
    Arch("vit_b_16", _cfg(embed_dim=512, image_size=224, patch_size=16, vision_width=768, vision_layers=12,
                          vision_heads=12, vision_mlp_dim=3072, context_length=77, vocab_size=49408,
                          text_width=512, text_layers=12, text_heads=8, text_mlp_dim=2048,
                          activation="gelu"), "open_clip", 16),
    # Odd sizes that would expose hard-coded 224 / 768 / 77 / 64-wide heads / 4x MLPs
    Arch("odd_hf", _cfg(embed_dim=48, image_size=80, patch_size=16, vision_width=96, vision_layers=3,
                        vision_heads=3, vision_mlp_dim=240, context_length=40, vocab_size=49408,
                        text_width=80, text_layers=2, text_heads=2, text_mlp_dim=200,
                        activation="quick_gelu"), "transformers", 7),
    Arch("odd_oc", _cfg(embed_dim=48, image_size=80, patch_size=16, vision_width=96, vision_layers=3,
                        vision_heads=3, vision_mlp_dim=240, context_length=40, vocab_size=49408,
                        text_width=80, text_layers=2, text_heads=2, text_mlp_dim=200,
                        activation="gelu"), "open_clip", 8),
    # A LayerNorm epsilon far from PyTorch's 1e-5, read from config.json: a model that ignored it (or any
    # LayerNorm that used 1e-5 regardless) would miss this reference by ~1e-2, 100x the tolerance
    Arch("odd_eps", _cfg(embed_dim=48, image_size=80, patch_size=16, vision_width=96, vision_layers=3,
                         vision_heads=3, vision_mlp_dim=240, context_length=40, vocab_size=49408,
                         text_width=80, text_layers=2, text_heads=2, text_mlp_dim=200,
                         activation="quick_gelu", layer_norm_eps=1e-2), "transformers", 9),
]}

TEXTS = ["a diagram", "a dog", "a cat",
         "a photo of a big brown dog running along the beach, with the sea and the sky behind it"]
N_IMAGES = 2


def seeded_params(arch: Arch) -> dict[str, np.ndarray]:
    """The internal representation (OpenAI names and orientation), float32, deterministic in (seed, name):
    the package's one generator of random weights (miniclip/hub/random_weights.py), which must stay as it is,
    since the committed fixtures were computed from its values (test_model_fixtures checks a fingerprint)."""
    return random_params(arch.config, arch.seed)


def seeded_images(arch: Arch) -> np.ndarray:  # [N_IMAGES, 3, S, S], roughly what preprocess() produces
    S = arch.config.image_size
    rng = np.random.RandomState(arch.seed + 12345)
    return (rng.random_sample((N_IMAGES, 3, S, S)) * 4 - 2).astype(np.float32)


def fingerprint(params: dict[str, np.ndarray]) -> np.ndarray:
    """A few numbers that change if the seeded weights ever do (e.g. a changed generator)."""
    return np.array([float(params[n].astype(np.float64).sum()) for n in sorted(params)[:8]])


# ---------------------------------------------------------------------------------------------------
# Writing the two layouts

def to_open_clip(params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {n: np.array(t, order="C") for n, t in params.items()}


def to_transformers(params: dict[str, np.ndarray], cfg: CLIPConfig) -> dict[str, np.ndarray]:
    out = {
        "vision_model.embeddings.class_embedding": params["visual.class_embedding"],
        "vision_model.embeddings.patch_embedding.weight": params["visual.conv1.weight"],
        "vision_model.embeddings.position_embedding.weight": params["visual.positional_embedding"],
        "vision_model.pre_layrnorm.weight": params["visual.ln_pre.weight"],
        "vision_model.pre_layrnorm.bias": params["visual.ln_pre.bias"],
        "vision_model.post_layernorm.weight": params["visual.ln_post.weight"],
        "vision_model.post_layernorm.bias": params["visual.ln_post.bias"],
        "visual_projection.weight": params["visual.proj"].T,
        "text_model.embeddings.token_embedding.weight": params["token_embedding.weight"],
        "text_model.embeddings.position_embedding.weight": params["positional_embedding"],
        "text_model.final_layer_norm.weight": params["ln_final.weight"],
        "text_model.final_layer_norm.bias": params["ln_final.bias"],
        "text_projection.weight": params["text_projection"].T,
        "logit_scale": params["logit_scale"],
    }
    for ours, theirs, n in (("visual.transformer.resblocks", "vision_model.encoder.layers", cfg.vision_layers),
                            ("transformer.resblocks", "text_model.encoder.layers", cfg.text_layers)):
        for i in range(n):
            a, b = f"{ours}.{i}", f"{theirs}.{i}"
            for x, y in (("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"), ("attn.out_proj", "self_attn.out_proj"),
                         ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):
                out[f"{b}.{y}.weight"] = params[f"{a}.{x}.weight"]
                out[f"{b}.{y}.bias"] = params[f"{a}.{x}.bias"]
            for kind in ("weight", "bias"):
                q, k, v = np.split(params[f"{a}.attn.in_proj_{kind}"], 3, axis=0)
                for letter, t in zip("qkv", (q, k, v), strict=True):
                    out[f"{b}.self_attn.{letter}_proj.{kind}"] = t
    return {n: np.array(t, order="C") for n, t in out.items()}


def transformers_config(cfg: CLIPConfig) -> dict:
    return {
        "architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": cfg.embed_dim,
        "logit_scale_init_value": 2.6592,
        "text_config": {"hidden_size": cfg.text_width, "intermediate_size": cfg.text_mlp_dim,
                        "num_attention_heads": cfg.text_heads, "num_hidden_layers": cfg.text_layers,
                        "max_position_embeddings": cfg.context_length, "vocab_size": cfg.vocab_size,
                        "hidden_act": cfg.activation, "layer_norm_eps": cfg.layer_norm_eps,
                        "projection_dim": cfg.embed_dim, "bos_token_id": 49406, "eos_token_id": 49407,
                        "pad_token_id": 1},
        "vision_config": {"hidden_size": cfg.vision_width, "intermediate_size": cfg.vision_mlp_dim,
                          "num_attention_heads": cfg.vision_heads, "num_hidden_layers": cfg.vision_layers,
                          "image_size": cfg.image_size, "patch_size": cfg.patch_size,
                          "hidden_act": cfg.activation, "layer_norm_eps": cfg.layer_norm_eps,
                          "projection_dim": cfg.embed_dim, "num_channels": 3},
    }


def open_clip_config(cfg: CLIPConfig) -> dict:
    model_cfg = {
        "embed_dim": cfg.embed_dim,
        "vision_cfg": {"image_size": cfg.image_size, "layers": cfg.vision_layers, "width": cfg.vision_width,
                       "patch_size": cfg.patch_size, "head_width": cfg.vision_width // cfg.vision_heads,
                       "mlp_ratio": cfg.vision_mlp_dim / cfg.vision_width},
        "text_cfg": {"context_length": cfg.context_length, "vocab_size": cfg.vocab_size, "width": cfg.text_width,
                     "heads": cfg.text_heads, "layers": cfg.text_layers,
                     "mlp_ratio": cfg.text_mlp_dim / cfg.text_width},
    }
    if cfg.activation == "quick_gelu":  # absent means exact GELU, as open_clip reads it
        model_cfg["quick_gelu"] = True
    return {"model_cfg": model_cfg}


def write_checkpoint(arch: Arch, directory: Path, layout: str | None = None, with_config: bool = True,
                     params: dict[str, np.ndarray] | None = None) -> Path:
    """Write the seeded weights of `arch` as a downloaded checkpoint would look; returns the weights file."""
    layout = layout or arch.layout
    params = seeded_params(arch) if params is None else params
    directory.mkdir(parents=True, exist_ok=True)
    if layout == "transformers":
        path = directory / "model.safetensors"
        save_file(to_transformers(params, arch.config), str(path))
        config = transformers_config(arch.config)
        config_path = directory / "config.json"
    else:
        path = directory / "open_clip_model.safetensors"
        save_file(to_open_clip(params), str(path))
        config = open_clip_config(arch.config)
        config_path = directory / "open_clip_config.json"
    if with_config:
        config_path.write_text(json.dumps(config, indent=2))
    return path
