"""The published check: openai/CLIP's README example with the real ViT-B/32 weights.

The weights cannot be downloaded by the tests; point MINICLIP_VIT_B_32 at a copy (a directory holding
model.safetensors + config.json from openai/clip-vit-base-patch32, or open_clip_model.safetensors +
open_clip_config.json from timm/vit_base_patch32_clip_224.openai, or such a .safetensors file).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import miniclip

WEIGHTS = os.environ.get("MINICLIP_VIT_B_32")
CLIP_PNG = Path(__file__).resolve().parent / "data" / "CLIP.png"
# openai/CLIP README: "Label probs: [[0.9927937  0.00421068 0.00299572]]"
EXPECTED = np.array([[0.9927937, 0.00421068, 0.00299572]])


@pytest.mark.skipif(not WEIGHTS, reason="real ViT-B/32 weights not present: set MINICLIP_VIT_B_32 to a "
                    "directory or .safetensors file of openai/clip-vit-base-patch32 to run the published check")
def test_readme_example_probabilities():
    model, preprocess = miniclip.load(WEIGHTS)  # a bare file is assumed QuickGELU, right for OpenAI weights
    image = np.stack([preprocess(Image.open(CLIP_PNG))])
    text = miniclip.tokenize(["a diagram", "a dog", "a cat"])
    logits_per_image, _ = model(image, text)
    probs = np.exp(logits_per_image - logits_per_image.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    np.testing.assert_allclose(probs, EXPECTED, atol=1e-4)
