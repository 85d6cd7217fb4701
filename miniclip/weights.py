"""From a checkpoint on disk to miniclip's one internal weight representation.

The internal representation is a flat dict of float32 arrays named exactly as in OpenAI's released
checkpoints (which open_clip kept), e.g. `visual.transformer.resblocks.0.attn.in_proj_weight`, with the
same orientation: linear weights are [out, in] (PyTorch's), `visual.proj` and `text_projection` are
[width, embed_dim] (used as `x @ proj`). Each file layout is mapped onto it by exactly one function,
`from_open_clip` or `from_transformers`; `check_shapes` then asserts every tensor's shape against the
config. Nothing outside this module knows about Hugging Face names.
"""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path

import numpy as np

from .config import ACTIVATIONS, HEAD_WIDTH, CLIPConfig
from .errors import WeightsError
from .safetensors_file import INDEX_SUFFIX, parse_json, read_checkpoint, release, short_repr

# ---------------------------------------------------------------------------------------------------
# The internal representation


def block_names(prefix: str, width: int, mlp_dim: int) -> dict[str, tuple[int, ...]]:
    """Names and shapes of one pre-LN residual attention block (OpenAI `ResidualAttentionBlock`)."""
    D, H = width, mlp_dim
    return {
        f"{prefix}.ln_1.weight": (D,), f"{prefix}.ln_1.bias": (D,),
        f"{prefix}.attn.in_proj_weight": (3 * D, D), f"{prefix}.attn.in_proj_bias": (3 * D,),  # q, k, v stacked
        f"{prefix}.attn.out_proj.weight": (D, D), f"{prefix}.attn.out_proj.bias": (D,),
        f"{prefix}.ln_2.weight": (D,), f"{prefix}.ln_2.bias": (D,),
        f"{prefix}.mlp.c_fc.weight": (H, D), f"{prefix}.mlp.c_fc.bias": (H,),
        f"{prefix}.mlp.c_proj.weight": (D, H), f"{prefix}.mlp.c_proj.bias": (D,),
    }


def expected_shapes(cfg: CLIPConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor of the internal representation and its shape under `cfg`."""
    Dv, Dt, E, P = cfg.vision_width, cfg.text_width, cfg.embed_dim, cfg.patch_size
    shapes: dict[str, tuple[int, ...]] = {
        "visual.conv1.weight": (Dv, 3, P, P),  # the patch embedding: a stride-P convolution without bias
        "visual.class_embedding": (Dv,),
        "visual.positional_embedding": (cfg.grid_size**2 + 1, Dv),
        "visual.ln_pre.weight": (Dv,), "visual.ln_pre.bias": (Dv,),
    }
    for i in range(cfg.vision_layers):
        shapes |= block_names(f"visual.transformer.resblocks.{i}", Dv, cfg.vision_mlp_dim)
    shapes |= {
        "visual.ln_post.weight": (Dv,), "visual.ln_post.bias": (Dv,),
        "visual.proj": (Dv, E),
        "token_embedding.weight": (cfg.vocab_size, Dt),
        "positional_embedding": (cfg.context_length, Dt),
    }
    for i in range(cfg.text_layers):
        shapes |= block_names(f"transformer.resblocks.{i}", Dt, cfg.text_mlp_dim)
    shapes |= {
        "ln_final.weight": (Dt,), "ln_final.bias": (Dt,),
        "text_projection": (Dt, E),
        "logit_scale": (),
    }
    return shapes


def check_shapes(params: dict[str, np.ndarray], cfg: CLIPConfig, source: str) -> None:
    """Assert that `params` holds exactly the tensors `cfg` needs, each float32 and of the right shape."""
    expected = expected_shapes(cfg)
    missing = [name for name in expected if name not in params]
    if missing:
        raise WeightsError(f"{source}: missing tensors (internal names): {', '.join(missing)}")
    wrong = [f"{name}: expected {expected[name]}, found {tuple(params[name].shape)}"
             for name in expected if tuple(params[name].shape) != expected[name]]
    if wrong:
        raise WeightsError(f"{source}: unexpected tensor shapes for this architecture:\n  " + "\n  ".join(wrong))
    not_float = [f"{name} ({params[name].dtype})" for name in expected if params[name].dtype != np.float32]
    if not_float:
        raise WeightsError(f"{source}: tensors must be floating point, found: {', '.join(not_float)}")


def infer_config(params: dict[str, np.ndarray], activation: str) -> CLIPConfig:
    """Architecture from tensor shapes alone (as openai/CLIP's `build_model` does), heads = width / HEAD_WIDTH."""
    def layers(prefix: str) -> int:
        pattern = re.compile(re.escape(prefix) + r"\.(\d+)\.")
        found = {int(m.group(1)) for name in params if (m := pattern.match(name))}
        return max(found) + 1 if found else 0

    try:
        vision_width = params["visual.class_embedding"].shape[0]
        patch_size = params["visual.conv1.weight"].shape[-1]
        n_positions = params["visual.positional_embedding"].shape[0]
        text_width = params["ln_final.weight"].shape[0]
        context_length, _ = params["positional_embedding"].shape
        vocab_size, _ = params["token_embedding.weight"].shape
        embed_dim = params["text_projection"].shape[-1]
        vision_mlp = params["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0]
        text_mlp = params["transformer.resblocks.0.mlp.c_fc.weight"].shape[0]
    except (KeyError, ValueError, IndexError) as e:
        raise WeightsError(f"cannot infer the architecture: tensor {e} missing or mis-shaped") from e
    grid = round((n_positions - 1) ** 0.5)
    if grid * grid + 1 != n_positions:
        raise WeightsError(f"visual.positional_embedding has {n_positions} positions: not 1 + a square grid")
    return _config("the tensors", dict(
        embed_dim=embed_dim, image_size=grid * patch_size, patch_size=patch_size,
        vision_width=vision_width, vision_layers=layers("visual.transformer.resblocks"),
        vision_heads=max(1, vision_width // HEAD_WIDTH), vision_mlp_dim=vision_mlp,
        context_length=context_length, vocab_size=vocab_size, text_width=text_width,
        text_layers=layers("transformer.resblocks"), text_heads=max(1, text_width // HEAD_WIDTH),
        text_mlp_dim=text_mlp, activation=activation))


# ---------------------------------------------------------------------------------------------------
# Layout 1: OpenAI / open_clip (`open_clip_model.safetensors`): already the internal names.

# Buffers some exports include that carry no weights: the causal mask (rebuilt here).
_OPEN_CLIP_IGNORED = re.compile(r"^(attn_mask|visual\.attn_mask)$")


def from_open_clip(tensors: dict[str, np.ndarray], source: str) -> dict[str, np.ndarray]:
    """open_clip / OpenAI checkpoint -> internal representation: the names are already ours."""
    prefix = "module."  # checkpoints saved from DistributedDataParallel carry this prefix on every name
    if tensors and all(name.startswith(prefix) for name in tensors):
        tensors = {name[len(prefix):]: t for name, t in tensors.items()}
    return {name: t for name, t in tensors.items() if not _OPEN_CLIP_IGNORED.match(name)}


# ---------------------------------------------------------------------------------------------------
# Layout 2: Hugging Face transformers `CLIPModel` (`model.safetensors`).

_HF_BLOCK = {  # per-layer names: transformers -> OpenAI (q/k/v are handled apart: they are stacked)
    "layer_norm1.weight": "ln_1.weight", "layer_norm1.bias": "ln_1.bias",
    "self_attn.out_proj.weight": "attn.out_proj.weight", "self_attn.out_proj.bias": "attn.out_proj.bias",
    "layer_norm2.weight": "ln_2.weight", "layer_norm2.bias": "ln_2.bias",
    "mlp.fc1.weight": "mlp.c_fc.weight", "mlp.fc1.bias": "mlp.c_fc.bias",
    "mlp.fc2.weight": "mlp.c_proj.weight", "mlp.fc2.bias": "mlp.c_proj.bias",
}
_HF_TOP = {  # everything outside the blocks: transformers -> OpenAI
    "vision_model.embeddings.class_embedding": "visual.class_embedding",
    "vision_model.embeddings.patch_embedding.weight": "visual.conv1.weight",
    "vision_model.embeddings.position_embedding.weight": "visual.positional_embedding",
    "vision_model.pre_layrnorm.weight": "visual.ln_pre.weight",  # sic: transformers spells it "layrnorm"
    "vision_model.pre_layrnorm.bias": "visual.ln_pre.bias",
    "vision_model.post_layernorm.weight": "visual.ln_post.weight",
    "vision_model.post_layernorm.bias": "visual.ln_post.bias",
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
    "logit_scale": "logit_scale",
}
_HF_TRANSPOSED = {  # nn.Linear weights [E, D] in transformers; OpenAI stores these projections as [D, E]
    "visual_projection.weight": "visual.proj",
    "text_projection.weight": "text_projection",
}
_HF_TOWERS = {"vision_model.encoder.layers": "visual.transformer.resblocks",
              "text_model.encoder.layers": "transformer.resblocks"}
_HF_IGNORED = re.compile(r"^(vision_model|text_model)\.embeddings\.position_ids$")  # an arange buffer


def from_transformers(tensors: dict[str, np.ndarray], source: str) -> dict[str, np.ndarray]:
    """transformers `CLIPModel` checkpoint -> internal representation. Renames, stacks q/k/v into
    `in_proj_*` (the only copy made), and transposes the two projections (a view, no copy)."""
    params: dict[str, np.ndarray] = {}
    missing: list[str] = []
    used: set[str] = set()

    def take(name: str) -> np.ndarray | None:
        if name not in tensors:
            missing.append(name)
            return None
        used.add(name)
        return tensors[name]

    for hf, ours in _HF_TOP.items():
        if (t := take(hf)) is not None:
            params[ours] = t
    for hf, ours in _HF_TRANSPOSED.items():
        if (t := take(hf)) is not None:
            params[ours] = t.T
    for hf_tower, our_tower in _HF_TOWERS.items():
        pattern = re.compile(re.escape(hf_tower) + r"\.(\d+)\.")
        indices = {int(m.group(1)) for name in tensors if (m := pattern.match(name))}
        for i in range(max(indices) + 1 if indices else 0):
            hf_prefix, our_prefix = f"{hf_tower}.{i}", f"{our_tower}.{i}"
            for hf, ours in _HF_BLOCK.items():
                if (t := take(f"{hf_prefix}.{hf}")) is not None:
                    params[f"{our_prefix}.{ours}"] = t
            for kind in ("weight", "bias"):  # stack [q; k; v] as nn.MultiheadAttention's in_proj does
                qkv = [take(f"{hf_prefix}.self_attn.{p}_proj.{kind}") for p in "qkv"]
                if all(t is not None for t in qkv):
                    if len({t.shape for t in qkv}) != 1:
                        raise WeightsError(f"{source}: {hf_prefix}.self_attn q/k/v_proj.{kind} shapes differ: "
                                           f"{[t.shape for t in qkv]}")
                    params[f"{our_prefix}.attn.in_proj_{kind}"] = np.concatenate(qkv, axis=0)
                    for t in qkv:  # the stacked copy replaces them: let their file pages go
                        release(t)
    if missing:
        raise WeightsError(f"{source}: missing tensors: {', '.join(missing)}")
    unexpected = [n for n in tensors if n not in used and not _HF_IGNORED.match(n)]
    if unexpected:
        raise WeightsError(f"{source}: unexpected tensors (not part of a CLIP ViT model miniclip knows): "
                           f"{', '.join(sorted(unexpected)[:20])}")
    return params


# ---------------------------------------------------------------------------------------------------
# Layout detection and config files


def detect_layout(tensors: dict[str, np.ndarray], source: str) -> str:
    names = set(tensors)
    if any(n.startswith(("vision_model.", "text_model.")) for n in names):
        return "transformers"
    if any(n.removeprefix("module.").startswith("visual.") for n in names):
        return "open_clip"
    sample = ", ".join(sorted(names)[:5]) or "no tensors at all"
    raise WeightsError(f"{source}: unknown weight layout: expected transformers CLIPModel names "
                       f"(vision_model.*, text_model.*) or OpenAI/open_clip names (visual.*), found {sample}")


def _get(d: dict, key: str, default):
    """d[key], or `default` when absent or null (as the reference configs' defaults fill them)."""
    value = d.get(key)
    return default if value is None else value


# Config files are checked value by value: a crafted or broken file must give a WeightsError naming the
# key, never a ZeroDivisionError or an AttributeError from deep inside, nor a model that loads silently.

def _section(d: dict, key: str, source: str, default: dict | None = None) -> dict:
    """The object d[key] ({} or `default` when absent or null); WeightsError when it is not an object."""
    value = d.get(key)
    if value is None:
        return {} if default is None else default
    if not isinstance(value, dict):
        raise WeightsError(f"{source}: {key} must be a JSON object, got {type(value).__name__}")
    return value


def _positive_int(d: dict, key: str, default: int, name: str, source: str) -> int:
    """d[key] as an integer >= 1 (bool and 3.0 are refused: JSON writers emit integers as such)."""
    value = _get(d, key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise WeightsError(f"{source}: {name}={short_repr(value)} must be an integer >= 1")
    return value


def _string(d: dict, key: str, default: str, name: str, source: str) -> str:
    value = _get(d, key, default)
    if not isinstance(value, str):
        raise WeightsError(f"{source}: {name}={short_repr(value)} must be a string")
    return value


def _epsilon(d: dict, key: str, name: str, source: str) -> float:
    """A LayerNorm epsilon: a finite number > 0 (a negative one makes some variances negative: NaNs)."""
    value = _get(d, key, 1e-5)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise WeightsError(f"{source}: {name}={short_repr(value)} must be a finite number > 0")
    return float(value)


def _check_agrees(name: str, config_value, cfg_value, what: str, source: str) -> None:
    if config_value is not None and config_value != cfg_value:
        raise WeightsError(f"{source}: config says {name}={short_repr(config_value)} but the tensors give "
                           f"{what}={cfg_value}")


def apply_transformers_config(cfg: CLIPConfig, config: dict, source: str) -> CLIPConfig:
    """config.json of a transformers CLIPModel: heads, activation and epsilon come from it; sizes must
    agree with the tensors. Absent fields take transformers' defaults (CLIPTextConfig/CLIPVisionConfig)."""
    vision, text = _section(config, "vision_config", source), _section(config, "text_config", source)
    acts = {_string(vision, "hidden_act", "quick_gelu", "vision_config.hidden_act", source),
            _string(text, "hidden_act", "quick_gelu", "text_config.hidden_act", source)}
    eps = {_epsilon(vision, "layer_norm_eps", "vision_config.layer_norm_eps", source),
           _epsilon(text, "layer_norm_eps", "text_config.layer_norm_eps", source)}
    if len(acts) != 1 or len(eps) != 1:
        raise WeightsError(f"{source}: the two towers use different activations/epsilons ({acts}, {eps}): "
                           "miniclip supports one of each")
    (act,), (epsilon,) = acts, eps
    if act not in ACTIVATIONS:  # e.g. "gelu_new" / "gelu_pytorch_tanh" (tanh approximations)
        raise WeightsError(f"{source}: hidden_act={act!r} is not supported (supported: {', '.join(ACTIVATIONS)})")
    for key, value, what in [("vision_config.hidden_size", vision.get("hidden_size"), cfg.vision_width),
                             ("vision_config.image_size", vision.get("image_size"), cfg.image_size),
                             ("vision_config.patch_size", vision.get("patch_size"), cfg.patch_size),
                             ("vision_config.num_hidden_layers", vision.get("num_hidden_layers"), cfg.vision_layers),
                             ("text_config.hidden_size", text.get("hidden_size"), cfg.text_width),
                             ("text_config.num_hidden_layers", text.get("num_hidden_layers"), cfg.text_layers),
                             ("projection_dim", config.get("projection_dim"), cfg.embed_dim)]:
        _check_agrees(key, value, what, key.split(".")[-1], source)
    return _with(cfg, source, activation=act, layer_norm_eps=epsilon,
                 vision_heads=_positive_int(vision, "num_attention_heads", 12, "vision_config.num_attention_heads",
                                            source),
                 text_heads=_positive_int(text, "num_attention_heads", 8, "text_config.num_attention_heads", source))


def stated_activation(config: dict, layout: str) -> str | None:
    """The activation a config file states, or None when it says nothing about it (open_clip then means GELU
    and transformers QuickGELU, their defaults; a caller who knows better, e.g. miniclip's registry, may
    supply it instead without contradicting the file)."""
    if layout == "open_clip":
        model = config.get("model_cfg", config)
        value = model.get("quick_gelu") if isinstance(model, dict) else None
        return None if value is None else ("quick_gelu" if value else "gelu")
    sections = (config.get("vision_config"), config.get("text_config"))
    stated = [s.get("hidden_act") for s in sections if isinstance(s, dict) and s.get("hidden_act") is not None]
    return stated[0] if stated else None


# open_clip settings that change the architecture, with the only value miniclip implements.
_OPEN_CLIP_FIXED = {
    "vision_cfg": {"ls_init_value": None, "attentional_pool": False, "no_ln_pre": False,
                   "pos_embed_type": "learnable", "final_ln_after_pool": False, "pool_type": "tok",
                   "timm_model_name": None, "input_patchnorm": False, "act_kwargs": None, "norm_kwargs": None},
    "text_cfg": {"ls_init_value": None, "embed_cls": False, "no_causal_mask": False, "final_ln_after_pool": False,
                 "pool_type": "argmax", "proj_bias": False, "proj_type": "linear", "hf_model_name": None,
                 "hf_tokenizer_name": None, "act_kwargs": None, "norm_kwargs": None},
    "model_cfg": {"init_logit_bias": None, "custom_text": None},
}


def apply_open_clip_config(cfg: CLIPConfig, config: dict, source: str) -> CLIPConfig:
    """open_clip_config.json (the hub's {"model_cfg": ...} or a bare model config). As in open_clip's
    `CLIP.__init__`, an absent `quick_gelu` means False, i.e. exact GELU: LAION-trained weights."""
    model = _section(config, "model_cfg", source, default=config)
    vision, text = _section(model, "vision_cfg", source), _section(model, "text_cfg", source)
    for section, cfg_dict in (("vision_cfg", vision), ("text_cfg", text), ("model_cfg", model)):
        for key, allowed in _OPEN_CLIP_FIXED[section].items():
            value = cfg_dict.get(key)
            if key == "custom_text" and value is not None:
                continue  # only a switch for which class open_clip builds; the tensors decide the rest
            if value not in (None, allowed) and not (value in ({}, False) and allowed is None):
                raise WeightsError(f"{source}: open_clip setting {section}.{key}={short_repr(value)} is not supported "
                                   f"by miniclip (it implements {allowed!r})")
    head_width = _positive_int(vision, "head_width", HEAD_WIDTH, "vision_cfg.head_width", source)
    quick_gelu = _get(model, "quick_gelu", False)
    if not isinstance(quick_gelu, bool):
        raise WeightsError(f"{source}: quick_gelu={short_repr(quick_gelu)} must be true or false")
    for key, value, what in [("vision_cfg.width", vision.get("width"), cfg.vision_width),
                             ("vision_cfg.layers", vision.get("layers"), cfg.vision_layers),
                             ("vision_cfg.patch_size", vision.get("patch_size"), cfg.patch_size),
                             ("vision_cfg.image_size", vision.get("image_size"), cfg.image_size),
                             ("text_cfg.width", text.get("width"), cfg.text_width),
                             ("text_cfg.layers", text.get("layers"), cfg.text_layers),
                             ("text_cfg.context_length", text.get("context_length"), cfg.context_length),
                             ("text_cfg.vocab_size", text.get("vocab_size"), cfg.vocab_size),
                             ("embed_dim", model.get("embed_dim"), cfg.embed_dim)]:
        _check_agrees(key, value, what, key.split(".")[-1], source)
    return _with(cfg, source, activation="quick_gelu" if quick_gelu else "gelu",
                 vision_heads=cfg.vision_width // head_width,
                 text_heads=_positive_int(text, "heads", 8, "text_cfg.heads", source))


def _with(cfg: CLIPConfig, source: str, **changes) -> CLIPConfig:
    return _config(source, cfg.to_dict() | changes)


def _config(source: str, values: dict) -> CLIPConfig:
    """CLIPConfig(**values), its ValueError (e.g. a width not divisible into the heads) as a WeightsError."""
    try:
        return CLIPConfig(**values)
    except ValueError as e:
        raise WeightsError(f"{source}: {e}") from None


# ---------------------------------------------------------------------------------------------------
# Finding the files


# The file names of the two layouts, as published on the hub: the one place they are spelled (miniclip/hub/ reads
# them here). layout -> (weights file names, config file name); open_clip first, and its own name first:
# `open_clip_pytorch_model.safetensors` is the name the hub's safetensors conversion bot gives a copy of
# open_clip's `open_clip_pytorch_model.bin`.
LAYOUT_FILES: dict[str, tuple[tuple[str, ...], str]] = {
    "open_clip": (("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors"), "open_clip_config.json"),
    "transformers": (("model.safetensors",), "config.json"),
}
WEIGHTS_FILES = tuple(name for names, _ in LAYOUT_FILES.values() for name in names)  # checked in this order


def find_weights_file(source: str | Path) -> Path:
    """The checkpoint `source` names: a .safetensors file, a sharded checkpoint's index
    (`model.safetensors.index.json`, its shards beside it), or a directory holding one of these."""
    path = Path(source).expanduser()
    if path.is_dir():
        for name in [*WEIGHTS_FILES, *(f"{name}.index.json" for name in WEIGHTS_FILES)]:  # files, then indexes
            if (path / name).is_file():
                return path / name
        found = sorted(path.glob("*.safetensors"))
        if len(found) == 1:
            return found[0]
        indexes = sorted(path.glob("*" + INDEX_SUFFIX))
        if not found and len(indexes) == 1:
            return indexes[0]
        what = ", ".join(p.name for p in found + indexes) if found or indexes else "no .safetensors file"
        raise WeightsError(f"{path}: expected {' or '.join(WEIGHTS_FILES)}, or a sharded checkpoint's "
                           f"*{INDEX_SUFFIX}, in this directory; "
                           f"found {what}")
    if not path.exists():
        raise WeightsError(f"{path}: no such file or directory")
    if path.suffix != ".safetensors" and not path.name.endswith(INDEX_SUFFIX):
        raise WeightsError(f"{path}: miniclip loads .safetensors files only (never pickled .bin/.pt files); "
                           "convert with `safetensors` or download the .safetensors version")
    return path


def load_weights(source: str | Path, activation: str | None = None) -> tuple[dict[str, np.ndarray], CLIPConfig]:
    """Read `source` (a .safetensors file, a shard index, or a directory holding one), map it to the internal
    representation, and work out its config: shapes first, then the layout's config file if one sits
    beside the weights. `activation` is needed only when there is no config file or it does not state one;
    a config that states another is refused."""
    if activation is not None and activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    path = find_weights_file(source)
    tensors = read_checkpoint(path)
    layout = detect_layout(tensors, str(path))
    params = (from_transformers if layout == "transformers" else from_open_clip)(tensors, str(path))
    cfg = infer_config(params, activation or "quick_gelu")
    config_file = path.parent / LAYOUT_FILES[layout][1]
    if config_file.is_file():
        try:
            raw = config_file.read_bytes()
        except OSError as e:
            raise WeightsError(f"{config_file}: cannot read config: {e}") from e
        config = parse_json(raw, f"{config_file}: cannot read config: not valid JSON")
        if not isinstance(config, dict):
            raise WeightsError(f"{config_file}: expected a JSON object")
        apply = apply_transformers_config if layout == "transformers" else apply_open_clip_config
        cfg = apply(cfg, config, str(config_file))
        if activation is not None:
            stated = stated_activation(config, layout)
            if stated is not None and activation != stated:
                raise WeightsError(f"activation={activation!r} was asked for, but {config_file} says "
                                   f"{stated!r}; drop the argument to use the config's")
            cfg = _with(cfg, str(config_file), activation=activation)  # the config is silent, or agrees
    elif activation is None:
        warnings.warn(f"no {config_file.name} beside {path.name}: assuming activation='quick_gelu' (OpenAI "
                      "weights); pass activation='gelu' for LAION/open_clip-trained weights", stacklevel=3)
    check_shapes(params, cfg, str(path))
    return params, cfg
