"""Seeing inside the model: where an image matches a text, what the class token attends to, and a
printed trace of one forward pass.

    miniclip explain IMAGE --text "a dog" --out explain.png
    miniclip trace [--image IMAGE] [--text "a dog"]

Two heat maps, both on the (S/P) x (S/P) grid of patches:

- Patch-text similarity: CLIP trains only the class token to match texts, but the last block's patch
  tokens live in the same residual stream. Passed through the same ln_post and proj as the class token,
  each patch gets an embedding; its cosine similarity to the text embedding says which patches "look like"
  the text (the idea behind MaskCLIP, Zhou et al. 2022; it is coarse and noisy, not a segmentation).
- Attention rollout (Abnar & Zuidema 2020): how much the class token's final value draws on each input patch
  through all layers. Per layer, average the heads' attention probabilities A [T, T], add the residual
  connection as 0.5 A + 0.5 I, renormalize rows, and multiply the layers' matrices; row 0 (the class token)
  over the patch columns is the map.
"""

from __future__ import annotations

import sys

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .. import tokenize
from ..model import CLIP, normalize
from ..preprocess import CLIP_MEAN, CLIP_STD


def patch_similarity(model: CLIP, hidden: dict, text_features: np.ndarray) -> np.ndarray:  # -> [g, g]
    """Cosine similarity of every projected patch token of one image (`hidden` from
    encode_image(..., return_hidden=True)) to a text embedding [E]."""
    visual, cfg = model.params["visual"], model.config
    patches = hidden["hidden_states"][-1][0, 1:]  # the last block's output for the patch tokens: [N, D]
    patches = model.ops.layer_norm(patches, **visual["ln_post"], eps=cfg.layer_norm_eps)
    patches = model.ops.to_host(model.ops.linear(patches, visual["proj"].T))  # [N, E], as the class token
    similarity = normalize(patches) @ normalize(text_features[None])[0]  # [N]
    return similarity.reshape(cfg.grid_size, cfg.grid_size)


def attention_rollout(attentions: np.ndarray) -> np.ndarray:  # [L, H, T, T] of one image -> [g, g]
    """Abnar & Zuidema (2020): propagate attention through the layers, counting the residual path."""
    T = attentions.shape[-1]
    rollout = np.eye(T)
    for layer in attentions.astype(np.float64):
        a = 0.5 * layer.mean(axis=0) + 0.5 * np.eye(T)  # heads averaged; the residual stream keeps half
        a /= a.sum(axis=-1, keepdims=True)
        rollout = a @ rollout  # [T, T]: how much each token's value draws on each input token
    grid = round((T - 1) ** 0.5)
    return rollout[0, 1:].reshape(grid, grid)  # the class token's row, over the patches


def colorize(values: np.ndarray) -> np.ndarray:  # [h, w] in [0, 1] -> [h, w, 3] uint8
    """A dark-blue -> red -> yellow colormap, piecewise linear (no matplotlib needed)."""
    stops = np.array([[0, 0, 80], [40, 40, 200], [220, 40, 40], [255, 230, 60]], np.float64)
    x = np.clip(values, 0, 1) * (len(stops) - 1)
    i = np.minimum(x.astype(int), len(stops) - 2)
    t = (x - i)[..., None]
    return ((1 - t) * stops[i] + t * stops[i + 1]).astype(np.uint8)


def overlay(pixels: np.ndarray, heat: np.ndarray, alpha: float = 0.55) -> Image.Image:
    """The preprocessed image (un-normalized) with a heat map [g, g] stretched over it."""
    rgb = (pixels.transpose(1, 2, 0) * np.array(CLIP_STD) + np.array(CLIP_MEAN)).clip(0, 1)
    S = rgb.shape[0]
    span = heat.max() - heat.min()
    scaled = (heat - heat.min()) / span if span > 0 else np.zeros_like(heat)
    # nearest-neighbour upsampling keeps the patch grid visible: each square is one patch
    colors = Image.fromarray(colorize(scaled)).resize((S, S), Image.NEAREST)
    blended = (1 - alpha) * rgb * 255 + alpha * np.asarray(colors, np.float64)
    return Image.fromarray(blended.astype(np.uint8))


TITLE_HEIGHT, SCALE_HEIGHT, GAP = 16, 30, 10  # pixels: the titles above the panels, the colour scales below


def explain(model: CLIP, preprocess, image: Image.Image, text: str) -> tuple[Image.Image, dict]:
    """A PNG-ready picture [image | patch-text similarity | attention rollout], each panel titled, the two
    heat maps with a colour scale from their lowest to their highest value beneath; and the two maps."""
    pixels = preprocess(image)  # [3, S, S]
    text_features = model.encode_text(tokenize([text], model.config.context_length, truncate=True))[0]
    _, hidden = model.encode_image(pixels[None], return_hidden=True)
    similarity = patch_similarity(model, hidden, text_features)
    rollout = attention_rollout(hidden["attentions"][:, 0])
    S = model.config.image_size
    plain = overlay(pixels, np.zeros((1, 1)), alpha=0.0)
    picture = Image.new("RGB", (3 * S + 2 * GAP, TITLE_HEIGHT + S + SCALE_HEIGHT), "white")
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default()
    panels = [(("image", "image"), plain, None),
              ((f'cosine similarity to "{text}"', "similarity"), overlay(pixels, similarity), (similarity, "{:.3f}")),
              (("attention rollout, class token", "rollout"), overlay(pixels, rollout), (rollout, "{:.4f}"))]
    for i, ((title, short), panel, scale) in enumerate(panels):
        x = i * (S + GAP)
        picture.paste(panel, (x, TITLE_HEIGHT))
        draw.text((x, 2), _fit(draw, title, short, font, S), fill="black", font=font)
        if scale is not None:  # the colour scale: each map is stretched from its minimum to its maximum
            values, fmt = scale
            bar = Image.fromarray(colorize(np.tile(np.linspace(0, 1, S), (8, 1))))
            picture.paste(bar, (x, TITLE_HEIGHT + S + 4))
            low, high = fmt.format(values.min()), fmt.format(values.max())
            draw.text((x, TITLE_HEIGHT + S + 14), low, fill="black", font=font)
            draw.text((x + S - draw.textlength(high, font=font), TITLE_HEIGHT + S + 14), high, fill="black", font=font)
    return picture, {"similarity": similarity, "rollout": rollout}


def _fit(draw: ImageDraw.ImageDraw, text: str, short: str, font, width: int) -> str:
    """`text` if it fits in `width` pixels, else `short`, cut to fit with an ellipsis if need be."""
    for candidate in (text, short):
        if draw.textlength(candidate, font=font) <= width:
            return candidate
    while short and draw.textlength(short + "...", font=font) > width:
        short = short[:-1]
    return short + "..."


def trace(model: CLIP, pixels: np.ndarray | None, tokens: np.ndarray | None, out=None) -> None:
    """Print every named stage of one forward pass: shape and summary statistics."""
    out = out or sys.stdout
    for what, run in (("image", pixels), ("text", tokens)):
        if run is None:
            continue
        encode = model.encode_image if what == "image" else model.encode_text
        _, hidden = encode(run, return_hidden=True)
        print(f"# {what} encoder ({len(hidden['steps'])} steps)", file=out)
        print(f"{'step':52s} {'shape':>20s} {'mean':>10s} {'std':>10s} {'min':>10s} {'max':>10s}", file=out)
        for name, x in hidden["steps"]:
            x = np.asarray(x, np.float64)
            print(f"{name:52s} {str(list(x.shape)):>20s} {x.mean():10.4f} {x.std():10.4f} {x.min():10.4f} "
                  f"{x.max():10.4f}", file=out)
