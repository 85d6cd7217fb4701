"""`miniclip verify`: does miniclip give the reference's outputs on your weights and your inputs?

    miniclip verify --weights ViT-B-32                           # the published example, no torch needed
    miniclip verify --weights DIR --images a.jpg b.png --texts "a dog" "a cat"   # vs torch, if installed
    miniclip verify --weights DIR --reference-fixture ref.npz    # vs stored reference outputs

Every backend in `miniclip.backends.BACKENDS` is run on the same preprocessed pixels and token ids, and
compared with each reference that applies:

- **torch**: the reference implementation of the file's layout, transformers' `CLIPModel` for
  model.safetensors + config.json, open_clip's `CLIP` for open_clip_model.safetensors + open_clip_config.json,
  when torch and that library are installed (imported only then: miniclip never needs torch);
- **fixture**: outputs stored in a .npz (`--reference-fixture`): `image_features`, `text_features`,
  `logits_per_image`, and the inputs they were made from, `pixels` and `tokens` (else the given images and
  texts are used). `--save-reference FILE` writes one from the torch reference, to check a machine without
  torch;
- **published**: openai/CLIP's README example, CLIP.png (shipped as miniclip/data/CLIP.png) against
  "a diagram", "a dog", "a cat" -> [[0.9927937, 0.00421068, 0.00299572]], when the weights are OpenAI's
  ViT-B/32 (its architecture with QuickGELU) and no other images or texts are given.

It prints the worst differences per reference and backend: embeddings relative to their norm, logits
(and probabilities) absolute; and fails (exit status 1) when one exceeds the tolerances the test suite uses.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from ..backends import BACKENDS
from ..config import ARCHITECTURES
from ..errors import MiniclipError
from ..hub.download import resolve_model
from ..model import CLIP
from ..ops import softmax
from ..preprocess import load_image, preprocess
from ..safetensors_file import tensor_names
from ..terminal import text_table
from ..tokenizer import tokenize
from ..weights import LAYOUT_FILES, detect_layout, find_weights_file

CLIP_PNG = Path(__file__).resolve().parents[1] / "data" / "CLIP.png"
PUBLISHED_TEXTS = ["a diagram", "a dog", "a cat"]
PUBLISHED_PROBS = np.array([[0.9927937, 0.00421068, 0.00299572]])  # openai/CLIP README, ViT-B/32
FEATURE_RTOL = 1e-4  # the test suite's tolerances (tests/test_model_fixtures.py)
LOGIT_ATOL = 1e-3
# openai's figures come from their own run (another Pillow, maybe another device): a looser bound, which a
# wrong activation or layer still exceeds by far; the observed difference is printed either way.
PROB_ATOL = 1e-3


@dataclass
class Outputs:
    image_features: np.ndarray  # [N_images, E], not normalized
    text_features: np.ndarray  # [N_texts, E]
    logits_per_image: np.ndarray  # [N_images, N_texts]


@dataclass
class Comparison:
    reference: str
    backend: str
    image_features: float | None  # worst row's |a - b| / |b|
    text_features: float | None
    logits: float | None  # worst |a - b|
    probs: float | None
    ok: bool


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    return float((np.linalg.norm(actual - expected, axis=-1) / np.linalg.norm(expected, axis=-1)).max())


def run_model(model: CLIP, pixels: np.ndarray, tokens: np.ndarray) -> Outputs:
    logits_per_image, _ = model(pixels, tokens)
    return Outputs(model.encode_image(pixels), model.encode_text(tokens), logits_per_image)


def compare(reference: str, backend: str, ours: Outputs, ref: Outputs) -> Comparison:
    if ours.logits_per_image.shape != ref.logits_per_image.shape:
        raise MiniclipError(f"{reference}: reference logits have shape {list(ref.logits_per_image.shape)}, "
                            f"miniclip's {list(ours.logits_per_image.shape)}: not the same inputs")
    image = relative_error(ours.image_features, ref.image_features)
    text = relative_error(ours.text_features, ref.text_features)
    logits = float(np.abs(ours.logits_per_image - ref.logits_per_image).max())
    ok = image <= FEATURE_RTOL and text <= FEATURE_RTOL and logits <= LOGIT_ATOL
    return Comparison(reference, backend, image, text, logits, None, ok)


# ---------------------------------------------------------------------------------------------------
# The torch references (lazy imports: torch is never a miniclip dependency)


class ReferenceUnavailable(Exception):
    """Why a reference cannot be run here (a library missing, a file missing)."""


def torch_reference(weights_file: Path, layout: str, pixels: np.ndarray, tokens: np.ndarray) -> tuple[Outputs, str]:
    """Run the layout's reference implementation on the same inputs. Returns (outputs, description)."""
    try:
        import torch
    except ImportError as e:
        raise ReferenceUnavailable("torch is not installed (pip install torch transformers open_clip_torch)") from e
    if layout == "transformers":
        return _run_transformers(torch, weights_file, pixels, tokens)
    return _run_open_clip(torch, weights_file, pixels, tokens)


def _run_transformers(torch, weights_file: Path, pixels, tokens) -> tuple[Outputs, str]:
    try:
        import transformers
    except ImportError as e:
        raise ReferenceUnavailable("transformers is not installed (pip install transformers)") from e
    directory = weights_file.parent
    (weights_name,), config_name = LAYOUT_FILES["transformers"]  # the names from_pretrained reads
    if weights_file.name != weights_name or not (directory / config_name).is_file():
        raise ReferenceUnavailable(f"transformers needs {weights_name} + {config_name} in {directory}")
    model = transformers.CLIPModel.from_pretrained(directory, torch_dtype=torch.float32, attn_implementation="eager")
    model.eval()
    with torch.no_grad():
        pixel_values, input_ids = torch.from_numpy(pixels), torch.from_numpy(tokens.astype(np.int64))
        image = model.get_image_features(pixel_values=pixel_values)
        text = model.get_text_features(input_ids=input_ids)
        # transformers 5 returns an output object with the projected features as `pooler_output`
        image, text = getattr(image, "pooler_output", image), getattr(text, "pooler_output", text)
        logits = model(input_ids=input_ids, pixel_values=pixel_values).logits_per_image
    return (Outputs(image.float().numpy(), text.float().numpy(), logits.float().numpy()),
            f"transformers {transformers.__version__} (torch {torch.__version__})")


def _run_open_clip(torch, weights_file: Path, pixels, tokens) -> tuple[Outputs, str]:
    try:
        import open_clip
        from safetensors.torch import load_file
    except ImportError as e:
        raise ReferenceUnavailable("open_clip is not installed (pip install open_clip_torch)") from e
    import json

    config_file = weights_file.parent / LAYOUT_FILES["open_clip"][1]
    if not config_file.is_file():
        raise ReferenceUnavailable(f"open_clip needs {config_file.name} beside {weights_file.name}")
    config = json.loads(config_file.read_text(encoding="utf-8"))
    model_cfg = dict(config.get("model_cfg", config))
    model_cfg.pop("custom_text", None)  # only chooses the class open_clip's factory builds; this is CLIP
    model = open_clip.model.CLIP(**model_cfg)
    state = {k: v.float() for k, v in load_file(str(weights_file)).items()}  # float16/bfloat16 files too
    model.load_state_dict(state, strict=True)
    model.eval()
    with torch.no_grad():
        image = model.encode_image(torch.from_numpy(pixels))
        text = model.encode_text(torch.from_numpy(tokens.astype(np.int64)))
        i, t = image / image.norm(dim=-1, keepdim=True), text / text.norm(dim=-1, keepdim=True)
        logits = model.logit_scale.exp() * i @ t.T
    return (Outputs(image.numpy(), text.numpy(), logits.numpy()),
            f"open_clip {open_clip.__version__} (torch {torch.__version__})")


# ---------------------------------------------------------------------------------------------------
# The check


def _is_openai_vit_b_32(model: CLIP) -> bool:
    arch = ARCHITECTURES["ViT-B-32"]
    return model.config.to_dict() == arch.to_dict() | {"activation": "quick_gelu", "layer_norm_eps": 1e-5}


def _load_fixture(path: str | os.PathLike) -> dict[str, np.ndarray]:
    try:
        with np.load(path) as data:
            fixture = {k: data[k] for k in data.files}
    except (OSError, ValueError) as e:
        raise MiniclipError(f"{path}: cannot read the reference fixture: {e}") from e
    missing = {"image_features", "text_features", "logits_per_image"} - fixture.keys()
    if missing:
        raise MiniclipError(f"{path}: a reference fixture needs {', '.join(sorted(missing))}")
    return fixture


def verify(source: str | os.PathLike, images: list[str] | None = None, texts: list[str] | None = None, *,
           backends: list[str] | None = None, activation: str | None = None,
           reference_fixture: str | os.PathLike | None = None, use_torch: bool = True,
           save_reference: str | os.PathLike | None = None,
           out: IO[str] | None = None) -> list[Comparison]:
    """Compare every backend with every reference that applies; print the table to `out` and return it."""
    from .. import load

    out = out or sys.stdout
    backends = list(backends or BACKENDS)
    fixture = _load_fixture(reference_fixture) if reference_fixture is not None else None
    resolved, activation = resolve_model(source, activation)  # a registered model: the registry's activation
    weights_file = find_weights_file(resolved)
    layout = detect_layout(dict.fromkeys(tensor_names(weights_file)), str(weights_file))

    models: dict[str, CLIP] = {}
    notes = []
    for backend in backends:
        try:
            models[backend], _ = load(weights_file, backend=backend, activation=activation)
        except ImportError as e:  # an optional backend whose library is missing
            notes.append(f"backend {backend}: not available ({e})")
    if not models:
        raise MiniclipError("no backend could be loaded: " + "; ".join(notes))
    config = next(iter(models.values())).config

    # The inputs: the fixture's when it has them, else the given (or published) images and texts.
    defaults = not images and not texts and fixture is None
    if fixture is not None and "pixels" in fixture:
        pixels = fixture["pixels"].astype(np.float32)
    else:
        pixels = np.stack([preprocess(load_image(p), config.image_size) for p in (images or [CLIP_PNG])])
    if fixture is not None and "tokens" in fixture:
        tokens = fixture["tokens"].astype(np.int64)
    else:
        tokens = tokenize(texts or PUBLISHED_TEXTS, context_length=config.context_length)

    ours = {backend: run_model(model, pixels, tokens) for backend, model in models.items()}
    results: list[Comparison] = []
    if fixture is not None:
        ref = Outputs(fixture["image_features"], fixture["text_features"], fixture["logits_per_image"])
        results += [compare(f"fixture {Path(reference_fixture).name}", b, o, ref) for b, o in ours.items()]
    if use_torch:
        try:
            ref, name = torch_reference(weights_file, layout, pixels, tokens)
        except ReferenceUnavailable as e:
            notes.append(f"torch reference skipped: {e}")
        else:
            results += [compare(name, b, o, ref) for b, o in ours.items()]
            if save_reference is not None:
                np.savez_compressed(save_reference, pixels=pixels, tokens=tokens.astype(np.int32),
                                    image_features=ref.image_features, text_features=ref.text_features,
                                    logits_per_image=ref.logits_per_image, versions=np.array(name))
                notes.append(f"reference outputs saved to {save_reference}")
    if save_reference is not None and not any(n.startswith("reference outputs saved") for n in notes):
        raise MiniclipError("--save-reference needs the torch reference, which could not run: " + "; ".join(notes))
    if defaults and _is_openai_vit_b_32(next(iter(models.values()))):
        for backend, o in ours.items():
            diff = float(np.abs(softmax(o.logits_per_image) - PUBLISHED_PROBS).max())
            results.append(Comparison("published example (openai/CLIP README)", backend, None, None, None, diff,
                                      diff <= PROB_ATOL))
    elif defaults:
        notes.append("published example skipped: it is for OpenAI's ViT-B/32 (these weights are "
                     f"{config.vision_width}-wide, patch {config.patch_size}, {config.activation})")

    _print(out, weights_file, len(pixels), len(tokens), results, notes, ours, defaults)
    return results


def _print(out: IO[str], weights_file: Path, n_images: int, n_texts: int, results: list[Comparison],
           notes: list[str], ours: dict[str, Outputs], defaults: bool) -> None:
    print(f"miniclip verify: {weights_file} on {n_images} image(s) x {n_texts} text(s)", file=out)
    if defaults:
        first = next(iter(ours.values()))
        probs = ", ".join(f"{p:.7g}" for p in softmax(first.logits_per_image)[0])
        print(f"CLIP.png vs {PUBLISHED_TEXTS}: probabilities [{probs}]", file=out)
    if results:
        def fmt(x: float | None) -> str:
            return "-" if x is None else f"{x:.2g}"

        rows = [["reference", "backend", "image emb (rel)", "text emb (rel)", "logits (abs)", "probs (abs)", ""]]
        rows += [[r.reference, r.backend, fmt(r.image_features), fmt(r.text_features), fmt(r.logits),
                  fmt(r.probs), "ok" if r.ok else "FAIL"] for r in results]
        print(text_table(rows, rule=False), file=out)
        print(f"tolerances: embeddings {FEATURE_RTOL:g} of their norm, logits {LOGIT_ATOL:g}, "
              f"probabilities {PROB_ATOL:g}", file=out)
    for note in notes:
        print(f"note: {note}", file=out)
