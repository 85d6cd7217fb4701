"""Generate the reference fixtures tests/fixtures/model_<arch>.npz with PyTorch. Not run by CI.

For each architecture in tests/seeded.py: write the seeded weights in the arch's layout (exactly as the
tests will), load them with the reference implementation of that layout (transformers `CLIPModel` for
model.safetensors + config.json, open_clip `CLIP` for open_clip_model.safetensors + its config), run the
seeded images and texts through it, and store the outputs. The weights themselves are not stored: the tests
regenerate them from the seed and check their fingerprint.

    PYTHONPATH=. ../refenv/bin/python tests/make_model_fixtures.py [ARCH ...]   (see tests/README.md)
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import open_clip
import torch
import transformers
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from seeded import ARCHS, TEXTS, Arch, fingerprint, seeded_images, seeded_params, write_checkpoint  # noqa: E402

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def run_transformers(directory: Path, images: np.ndarray, tokens: np.ndarray) -> dict[str, np.ndarray]:
    model, info = transformers.CLIPModel.from_pretrained(
        directory, attn_implementation="eager", output_loading_info=True, torch_dtype=torch.float32)
    bad = {k: v for k, v in info.items() if v and k != "mismatched_keys" or (k == "mismatched_keys" and v)}
    assert not bad, f"transformers did not load the checkpoint cleanly: {bad}"
    model.eval()
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(tokens), pixel_values=torch.from_numpy(images),
                    output_hidden_states=True, output_attentions=True)
        # unnormalized projected features; transformers 5 returns them as `pooler_output`, 4 as a tensor
        image_features = model.get_image_features(pixel_values=torch.from_numpy(images))
        text_features = model.get_text_features(input_ids=torch.from_numpy(tokens))
        image_features = getattr(image_features, "pooler_output", image_features)
        text_features = getattr(text_features, "pooler_output", text_features)
    vision, text = out.vision_model_output, out.text_model_output
    return {
        "image_features": image_features.numpy(), "text_features": text_features.numpy(),
        "logits_per_image": out.logits_per_image.numpy(), "logits_per_text": out.logits_per_text.numpy(),
        # per-layer activations: [L + 1, B, T, D] (index 0: input of block 0) and [L, B, H, T, T]
        "vision_hidden_states": torch.stack(vision.hidden_states).numpy(),
        "vision_attentions": torch.stack(vision.attentions).numpy(),
        "text_hidden_states": torch.stack(text.hidden_states).numpy(),
        "text_attentions": torch.stack(text.attentions).numpy(),
    }


def run_open_clip(directory: Path, images: np.ndarray, tokens: np.ndarray) -> dict[str, np.ndarray]:
    model_cfg = json.loads((directory / "open_clip_config.json").read_text())["model_cfg"]
    model = open_clip.model.CLIP(**model_cfg)  # quick_gelu absent -> False, as open_clip reads it
    state = load_file(str(directory / "open_clip_model.safetensors"))  # safetensors: no unpickling
    model.load_state_dict(state, strict=True)
    model.eval()
    with torch.no_grad():
        image_features = model.encode_image(torch.from_numpy(images))
        text_features = model.encode_text(torch.from_numpy(tokens))
        i = image_features / image_features.norm(dim=-1, keepdim=True)
        t = text_features / text_features.norm(dim=-1, keepdim=True)
        logits_per_image = model.logit_scale.exp() * i @ t.T
        # per-layer activations in transformers' convention, recorded by hooks in a second pass (asking
        # nn.MultiheadAttention for its weights switches it off its fused path, so not in the pass above)
        vision_hidden, vision_attentions = recorded(model.visual.transformer, model.encode_image, images)
        text_hidden, text_attentions = recorded(model.transformer, model.encode_text, tokens)
    return {"image_features": image_features.numpy(), "text_features": text_features.numpy(),
            "logits_per_image": logits_per_image.numpy(), "logits_per_text": logits_per_image.T.numpy(),
            "vision_hidden_states": vision_hidden, "vision_attentions": vision_attentions,
            "text_hidden_states": text_hidden, "text_attentions": text_attentions}


def recorded(transformer, encode, inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """open_clip's own activations during `encode(inputs)`: the input of every residual block and the last
    block's output [L + 1, B, T, D], and every block's attention probabilities [L, B, H, T, T], which
    nn.MultiheadAttention computes itself when called with need_weights=True, average_attn_weights=False."""
    assert transformer.batch_first, "open_clip runs its blocks batch first since 2.24"
    hidden, attentions, handles = [], [], []

    def force_weights(module, args, kwargs):
        return args, {**kwargs, "need_weights": True, "average_attn_weights": False}

    blocks = list(transformer.resblocks)
    for block in blocks:
        handles.append(block.register_forward_pre_hook(lambda m, args: hidden.append(args[0].clone())))
        handles.append(block.attn.register_forward_pre_hook(force_weights, with_kwargs=True))
        handles.append(block.attn.register_forward_hook(lambda m, args, out: attentions.append(out[1].clone())))
    handles.append(blocks[-1].register_forward_hook(lambda m, args, out: hidden.append(out.clone())))
    try:
        encode(torch.from_numpy(inputs))
    finally:
        for handle in handles:
            handle.remove()
    return torch.stack(hidden).numpy(), torch.stack(attentions).numpy()


def make(arch: Arch) -> None:
    torch.manual_seed(0)
    params = seeded_params(arch)
    images = seeded_images(arch)
    tokens = open_clip.tokenize(TEXTS, context_length=arch.config.context_length).numpy()
    with tempfile.TemporaryDirectory() as tmp:
        write_checkpoint(arch, Path(tmp), params=params)
        run = run_transformers if arch.layout == "transformers" else run_open_clip
        outputs = run(Path(tmp), images, tokens)
    if arch.config.vision_width > 256:  # keep the big architectures' fixtures small
        outputs = {k: v for k, v in outputs.items() if "hidden_states" not in k and "attentions" not in k}
    path = FIXTURES / f"model_{arch.name}.npz"
    np.savez_compressed(
        path, tokens=tokens.astype(np.int32), fingerprint=fingerprint(params),
        versions=np.array(f"torch {torch.__version__}, transformers {transformers.__version__}, "
                          f"open_clip {open_clip.__version__}"),
        **{k: v.astype(np.float32) for k, v in outputs.items()})
    print(f"{path.name}: {path.stat().st_size / 1e3:.0f} kB, layout {arch.layout}, "
          + ", ".join(f"{k} {list(v.shape)}" for k, v in outputs.items()))


if __name__ == "__main__":
    torch.set_num_threads(2)
    FIXTURES.mkdir(exist_ok=True)
    for name in sys.argv[1:] or ARCHS:
        make(ARCHS[name])
