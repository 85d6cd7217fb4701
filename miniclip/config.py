"""The model's hyper-parameters: everything the forward pass needs besides the weights."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

ACTIVATIONS = ("quick_gelu", "gelu")
HEAD_WIDTH = 64  # every published CLIP ViT-B/L and text tower uses 64-wide heads (ViT-H/g: see config files)


@dataclass(frozen=True)
class CLIPConfig:
    embed_dim: int  # E: size of the joint image-text embedding space (512 for ViT-B, 768 for ViT-L)
    # image encoder (a ViT, paper section 2.4)
    image_size: int  # S: images are S x S pixels (224, or 336 for ViT-L/14@336)
    patch_size: int  # P: side of a square patch; the image is a (S/P) x (S/P) grid of patches
    vision_width: int  # D_v: width of the ViT residual stream
    vision_layers: int  # number of residual attention blocks
    vision_heads: int  # attention heads; head width D_v / heads is HEAD_WIDTH in all published CLIPs
    vision_mlp_dim: int  # hidden width of each block's MLP (4 * D_v in CLIP)
    # text encoder (a GPT-2-style transformer with a causal mask, paper section 2.4)
    context_length: int  # T: token positions (77)
    vocab_size: int  # byte-level BPE vocabulary (49408)
    text_width: int  # D_t: width of the text residual stream
    text_layers: int
    text_heads: int
    text_mlp_dim: int
    activation: str = "quick_gelu"  # MLP non-linearity: OpenAI's weights use QuickGELU, LAION's exact GELU
    layer_norm_eps: float = 1e-5  # epsilon of every LayerNorm (PyTorch's default, used by all CLIPs)

    def __post_init__(self) -> None:
        """Refuse a config no forward pass could run (ValueError naming the field): the values come from
        files (config.json, open_clip_config.json, tensor shapes), and a zero, a string or a negative
        epsilon would otherwise fail deep inside the model, or not at all (a negative epsilon gives NaNs
        only for some inputs)."""
        for field in fields(self):
            value = getattr(self, field.name)
            if field.type in ("int", int) and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{field.name} must be a positive integer, got {value!r}")
        if not isinstance(self.activation, str) or self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}")
        eps = self.layer_norm_eps
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (math.isfinite(eps) and eps > 0):
            raise ValueError(f"layer_norm_eps must be a finite number > 0, got {eps!r}")
        for tower, width, heads in (("vision", self.vision_width, self.vision_heads),
                                    ("text", self.text_width, self.text_heads)):
            if width % heads:
                raise ValueError(f"{tower} width {width} is not divisible into {heads} heads")

    @property
    def grid_size(self) -> int:  # S/P: patches per side
        return self.image_size // self.patch_size

    def to_dict(self) -> dict:
        return asdict(self)


def _vit(embed_dim, image_size, patch_size, width, layers, text_width, text_layers):
    return CLIPConfig(embed_dim=embed_dim, image_size=image_size, patch_size=patch_size, vision_width=width,
                      vision_layers=layers, vision_heads=width // HEAD_WIDTH, vision_mlp_dim=4 * width,
                      context_length=77, vocab_size=49408, text_width=text_width, text_layers=text_layers,
                      text_heads=text_width // HEAD_WIDTH, text_mlp_dim=4 * text_width)


# The published OpenAI architectures (openai/CLIP clip/model.py build_model on the released checkpoints).
# LAION's open_clip weights use the same shapes with activation="gelu".
ARCHITECTURES: dict[str, CLIPConfig] = {
    "ViT-B-32": _vit(512, 224, 32, 768, 12, 512, 12),
    "ViT-B-16": _vit(512, 224, 16, 768, 12, 512, 12),
    "ViT-L-14": _vit(768, 224, 14, 1024, 24, 768, 12),
    "ViT-L-14-336": _vit(768, 336, 14, 1024, 24, 768, 12),
}
