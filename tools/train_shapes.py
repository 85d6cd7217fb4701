"""Train `miniclip-shapes`: a tiny CLIP that knows one synthetic world of coloured shapes.

    /work/refenv/bin/python tools/train_shapes.py --out miniclip/data/shapes     # the shipped run
    python tools/train_shapes.py --steps 60 --out /tmp/try                       # a quick smoke run

Needs PyTorch and open_clip (a development tool: miniclip never imports torch, and CI never runs this).

**Model.** open_clip's own `CLIP` class, the architecture of the published models scaled down: a ViT image
tower on 64-pixel images cut into 8x8-pixel patches (an 8x8 grid), width 96, 4 blocks, 3 heads; a causal text
tower of width 64, 3 blocks, 4 heads, a 32-token context; a 64-dimensional joint space; exact GELU (open_clip's
default, `quick_gelu` off). The tokenizer is CLIP's BPE unchanged (miniclip.tokenize, with its full
49408-token vocabulary) and images go through miniclip's own preprocessing (openai's transform: bicubic
resize, center crop, CLIP's mean and std), so what the model learns from is exactly what miniclip feeds it.

**Vocabulary.** The captions use about 30 of the 49408 tokens, but the token embedding keeps all 49408
rows so that any text miniclip's tokenizer produces is a valid input (no remapping of ids, no change to the
tokenizer): at width 64 that is 3.16 M of the 3.80 M parameters. Rows of tokens that never occur keep their
random initialisation (normal, std 0.02), as in any CLIP. All tensors are stored in float16 (7.6 MB;
miniclip widens them to float32 when loading).

**Data.** Every step draws a fresh batch of scenes from `tools/shapes_data.py` (seeded by the step), so no
picture is seen twice: one or two objects (4 shapes x 6 colours, small or big, anywhere) on white, pale or
noisy backgrounds, canvases 64-160 pixels, captions from templates.

**Loss.** CLIP's symmetric contrastive loss (paper section 2.3), where captions that are the same string
count as positives of each other (in a world this small, a batch holds several "a red circle"). Plus a
FILIP-style token-wise term (Yao et al. 2021, "FILIP: Fine-grained Interactive Language-Image
Pre-Training"): each image's patch tokens, sent through the same ln_post and proj as the class token
(exactly what `miniclip explain` maps), are scored against every object phrase of the batch ("a red
circle") by their best-matching patch, with the same contrastive loss; the objects present are the
positives. This uses only the captions (no boxes), and it is what makes explain's patch-text map point at
the named object. Weight 0.5.

**Optimisation.** AdamW (lr 1e-3, betas 0.9/0.98, eps 1e-6, weight decay 0.1 on matrices only), 60 steps of
linear warm-up then cosine decay, 1000 steps of batch 64 (64,000 pictures), float32, one CPU thread
(`torch.set_num_threads(1)`), seed 0. The shipped run's command, wall time, losses and held-out checks every
100 steps are written to `tools/shapes_model.json` (`--summary`) with the files' sizes and SHA-256, and
open_clip's outputs for the shipped example pictures (which the tests compare miniclip's with).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tools"))

import open_clip  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402
from shapes_data import EXAMPLES, SHAPES, caption, draw_example, label_of, make_scene  # noqa: E402

from miniclip import tokenize  # noqa: E402
from miniclip.preprocess import make_preprocess  # noqa: E402

IMAGE_SIZE, CONTEXT = 64, 32
MODEL_CFG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": IMAGE_SIZE, "patch_size": 8, "width": 96, "layers": 4, "head_width": 32,
                   "mlp_ratio": 4.0},
    "text_cfg": {"context_length": CONTEXT, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 3,
                 "mlp_ratio": 4.0},
}
PREPROCESS_CFG = {"image_size": IMAGE_SIZE, "mean": [0.48145466, 0.4578275, 0.40821073],
                  "std": [0.26862954, 0.26130258, 0.27577711], "interpolation": "bicubic", "resize_mode": "shortest"}
WEIGHTS, CONFIG = "open_clip_model.safetensors", "open_clip_config.json"
SUMMARY = REPO / "tools" / "shapes_model.json"

preprocess = make_preprocess(IMAGE_SIZE)


def batch(step: int, size: int, seed: int):
    """`size` fresh scenes for this step: pixels [B, 3, 64, 64], caption tokens [B, 32], captions, objects."""
    rng = random.Random(seed * 1_000_003 + step)
    scenes = [make_scene(rng) for _ in range(size)]
    captions = [caption(s, rng) for s in scenes]
    pixels = torch.from_numpy(np.stack([preprocess(s.image) for s in scenes]))
    tokens = torch.from_numpy(tokenize(captions, CONTEXT))
    return pixels, tokens, captions, [[label_of(t.shape, t.color) for t in s.things] for s in scenes]


def soft_contrastive(logits: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each row's softmax against its positives (uniform over them), both directions,
    averaged: CLIP's loss when `positives` is the identity."""
    rows = positives / positives.sum(1, keepdim=True)
    cols = positives / positives.sum(0, keepdim=True)
    return (-(rows * F.log_softmax(logits, 1)).sum(1).mean() - (cols * F.log_softmax(logits, 0)).sum(0).mean()) / 2


def losses(model, pixels, tokens, captions, objects):
    pooled, patch_tokens = model.visual(pixels)  # [B, E], [B, N, Dv] (after ln_post, before proj)
    image = F.normalize(pooled, dim=-1)
    text = F.normalize(model.encode_text(tokens), dim=-1)
    scale = model.logit_scale.exp().clamp(max=100)
    same = torch.tensor([[a == b for b in captions] for a in captions], dtype=torch.float32)
    clip = soft_contrastive(scale * image @ text.T, same)

    # FILIP-style: every object phrase against every image's best-matching patch
    phrases = sorted({p for o in objects for p in o})
    phrase = F.normalize(model.encode_text(torch.from_numpy(tokenize(phrases, CONTEXT))), dim=-1)  # [P, E]
    patches = F.normalize(patch_tokens @ model.visual.proj, dim=-1)  # [B, N, E]
    best = torch.einsum("bne,pe->bpn", patches, phrase).amax(-1)  # [B, P]
    present = torch.tensor([[p in o for p in phrases] for o in objects], dtype=torch.float32)
    dense = soft_contrastive(scale * best, present)
    return clip, dense


@torch.no_grad()
def evaluate(model, seed: int = 12345, n: int = 96) -> tuple[float, float]:
    """Zero-shot accuracy over 4 shapes x 4 colours (single objects) and how often the patch map's peak for
    a named object of a two-object scene is inside its box: quick held-out numbers to watch training."""
    rng = random.Random(seed)
    colors = ("red", "green", "blue", "yellow")
    labels = [label_of(s, c) for s in SHAPES for c in colors]
    text = F.normalize(model.encode_text(torch.from_numpy(tokenize(labels, CONTEXT))), dim=-1)
    scenes = [make_scene(rng, 1, colors=colors) for _ in range(n)]
    pooled, _ = model.visual(torch.from_numpy(np.stack([preprocess(s.image) for s in scenes])))
    predicted = (F.normalize(pooled, dim=-1) @ text.T).argmax(1)
    truth = torch.tensor([labels.index(label_of(s.things[0].shape, s.things[0].color)) for s in scenes])
    accuracy = (predicted == truth).float().mean().item()

    scenes = [make_scene(rng, 2) for _ in range(n)]
    _, tokens = model.visual(torch.from_numpy(np.stack([preprocess(s.image) for s in scenes])))
    patches = F.normalize(tokens @ model.visual.proj, dim=-1)
    named = [s.things[i % 2] for i, s in enumerate(scenes)]
    phrase = F.normalize(model.encode_text(torch.from_numpy(tokenize([label_of(t.shape, t.color) for t in named],
                                                                     CONTEXT))), dim=-1)
    grid = IMAGE_SIZE // MODEL_CFG["vision_cfg"]["patch_size"]
    peaks = torch.einsum("bne,be->bn", patches, phrase).argmax(1).tolist()
    hits = others = 0
    for scene, thing, peak in zip(scenes, named, peaks, strict=True):
        cell = scene.side / grid  # the peak patch's center, in canvas pixels
        x, y = (peak % grid + 0.5) * cell, (peak // grid + 0.5) * cell
        inside = [t.box[0] <= x <= t.box[2] and t.box[1] <= y <= t.box[3] for t in scene.things]
        hits += inside[scene.things.index(thing)]
        others += inside[1 - scene.things.index(thing)]
    print(f"  (peak on the other object: {others / n:.2f})", flush=True)
    return accuracy, hits / n


def save(model, out: Path) -> dict:
    """open_clip's layout: open_clip_model.safetensors (float16) + open_clip_config.json (the hub's form).
    The model keeps the float16-rounded weights, so that `reference` describes the shipped file."""
    out.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.detach().float().numpy().astype(np.float16) for name, t in model.state_dict().items()}
    save_file(tensors, str(out / WEIGHTS), metadata={"format": "pt"})
    model.load_state_dict({name: torch.from_numpy(t.astype(np.float32)) for name, t in tensors.items()})
    config = {"model_cfg": MODEL_CFG, "preprocess_cfg": PREPROCESS_CFG}
    (out / CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return {name: {"bytes": (out / name).stat().st_size,
                   "sha256": hashlib.sha256((out / name).read_bytes()).hexdigest()} for name in (WEIGHTS, CONFIG)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the open_clip-layout files")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=60)
    parser.add_argument("--dense-weight", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--summary", action="store_true", help=f"record the run in {SUMMARY.relative_to(REPO)}")
    args = parser.parse_args()

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    model = open_clip.model.CLIP(**MODEL_CFG)  # quick_gelu=False: exact GELU
    model.visual.output_tokens = True
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                                  lr=args.lr, betas=(0.9, 0.98), eps=1e-6)

    def lr_at(step: int) -> float:
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        return 0.5 * args.lr * (1 + math.cos(math.pi * (step - args.warmup) / max(1, args.steps - args.warmup)))

    start, history, recent = time.time(), [], []
    for step in range(args.steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        clip, dense = losses(model, *batch(step, args.batch, args.seed))
        optimizer.zero_grad(set_to_none=True)
        (clip + args.dense_weight * dense).backward()
        optimizer.step()
        recent.append((clip.item(), dense.item()))
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            model.eval()
            accuracy, located = evaluate(model)
            model.train()
            clip_mean, dense_mean = np.mean(recent, axis=0)
            recent = []
            history.append({"step": step + 1, "seconds": round(time.time() - start), "clip_loss": round(clip_mean, 4),
                            "dense_loss": round(dense_mean, 4), "zero_shot_4x4": accuracy, "peak_in_box": located,
                            "logit_scale": round(model.logit_scale.exp().item(), 2)})
            print(json.dumps(history[-1]), flush=True)

    files = save(model.eval(), args.out)
    with torch.no_grad():  # open_clip's outputs on the shipped weights, for tests/test_shapes_model.py
        texts = ["a red circle", "a blue square", "a green triangle", "a small yellow star on the right",
                 "a blue square and a yellow star"]
        pooled, _ = model.visual(torch.from_numpy(np.stack([preprocess(draw_example(n)) for n in EXAMPLES])))
        reference = {"images": list(EXAMPLES), "texts": texts, "image_features": pooled.tolist(),
                     "text_features": model.encode_text(torch.from_numpy(tokenize(texts, CONTEXT))).tolist()}
    print(json.dumps(files, indent=2))
    if args.summary:
        record = {"about": "The shipped miniclip-shapes run (tools/train_shapes.py); tests/test_shapes_model.py "
                           "checks the files against these sizes and digests.",
                  "command": " ".join(["python", "tools/train_shapes.py", *sys.argv[1:]]),
                  "torch": torch.__version__, "open_clip": open_clip.__version__, "threads": 1,
                  "steps": args.steps, "batch": args.batch, "images_seen": args.steps * args.batch,
                  "wall_seconds": round(time.time() - start), "cpu_seconds": round(time.process_time()),
                  "final": history[-1], "history": history,
                  "files": files, "reference": reference}
        SUMMARY.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
