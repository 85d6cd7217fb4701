"""Write tests/fixtures/preprocess_torchvision.npz: torchvision's CLIP preprocessing of the test images.

Needs torch, torchvision and open_clip_torch, so it is not run by CI; run it by hand when the test
images change:

    PYTHONPATH=. ../refenv/bin/python tests/make_preprocess_fixtures.py   (see tests/README.md)

The reference transform is openai/CLIP's ``_transform(n_px)`` (clip/clip.py), rebuilt here from
torchvision because the ``clip`` package itself is not installed; it is cross-checked against
open_clip's inference transform (``open_clip.image_transform`` and the ``preprocess`` returned by
``open_clip.create_model_and_transforms``), which must agree bit for bit.

Stored arrays (all loadable with ``allow_pickle=False``):

- ``transform:{case}@{S}``: float32 (3, S, S), the full transform of each case in
  ``synthetic_images.CASES`` at each of its sizes, and of ``tests/data/CLIP.png`` (case ``CLIP.png``).
- ``crop_raw:{case}@{S}`` / ``crop_rgb:{case}@{S}``: ``CenterCrop(S)`` alone of each
  ``synthetic_images.CROP_CASES`` image, as ``np.asarray`` of the cropped image and of its RGB conversion.
- ``resize_sizes``: int64 (N, 6) rows ``(h, w, size, max_size or 0, new_h, new_w)`` from
  ``torchvision.transforms.functional._compute_resized_output_size``.
- ``versions``: the library versions that produced the file.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import open_clip
import PIL
import torch
import torchvision
from PIL import Image
from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Normalize, Resize, ToTensor
from torchvision.transforms import functional as TF

TESTS = Path(__file__).resolve().parent
OUTPUT = TESTS / "fixtures" / "preprocess_torchvision.npz"
CLIP_PNG = TESTS / "data" / "CLIP.png"

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def _load_test_images():
    spec = importlib.util.spec_from_file_location("synthetic_images", TESTS / "synthetic_images.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["synthetic_images"] = module
    spec.loader.exec_module(module)
    return module


def _convert_image_to_rgb(image: Image.Image) -> Image.Image:
    return image.convert("RGB")


def openai_transform(n_px: int) -> Compose:
    """openai/CLIP clip/clip.py `_transform`, verbatim in substance."""
    return Compose(
        [
            Resize(n_px, interpolation=InterpolationMode.BICUBIC),
            CenterCrop(n_px),
            _convert_image_to_rgb,
            ToTensor(),
            Normalize(MEAN, STD),
        ]
    )


def main() -> None:
    synthetic_images = _load_test_images()
    arrays: dict[str, np.ndarray] = {}
    worst_open_clip = 0.0

    jobs = [(case.name, case.image, size) for case in synthetic_images.CASES for size in case.sizes]
    jobs.append(("CLIP.png", lambda: Image.open(CLIP_PNG), 224))  # as openai's README: Image.open(path)

    open_clip_model_preprocess = None
    for name, make_image, size in jobs:
        image = make_image()
        mode, image_size = image.mode, image.size
        with torch.no_grad():
            expected = openai_transform(size)(image).numpy()
            # Cross-check: open_clip's inference transform for the same size.
            other = open_clip.image_transform(size, is_train=False, mean=MEAN, std=STD)(make_image()).numpy()
            if size == 224:
                if open_clip_model_preprocess is None:
                    _, _, open_clip_model_preprocess = open_clip.create_model_and_transforms(
                        "ViT-B-32", pretrained=None
                    )
                model_other = open_clip_model_preprocess(make_image()).numpy()
                assert np.array_equal(expected, model_other), name
        assert expected.dtype == np.float32 and expected.shape == (3, size, size), (name, expected.shape)
        diff = float(np.abs(expected - other).max())
        worst_open_clip = max(worst_open_clip, diff)
        print(f"{name:>18} {mode:>6} {str(image_size):>12} S={size:<4} open_clip max|diff| = {diff:g}")
        arrays[f"transform:{name}@{size}"] = expected

    for case, size in synthetic_images.CROP_CASES:
        cropped = CenterCrop(size)(case.image())
        assert cropped.size == (size, size) and cropped.mode == case.image().mode
        arrays[f"crop_raw:{case.name}@{size}"] = np.asarray(cropped)
        arrays[f"crop_rgb:{case.name}@{size}"] = np.asarray(cropped.convert("RGB"))

    rows = []
    for h, w, s, m in synthetic_images.RESIZE_SIZE_CASES:
        new_h, new_w = TF._compute_resized_output_size((h, w), [s], m or None)
        rows.append((h, w, s, m, new_h, new_w))
    arrays["resize_sizes"] = np.asarray(rows, dtype=np.int64)

    arrays["versions"] = np.asarray(
        f"torch {torch.__version__}, torchvision {torchvision.__version__}, "
        f"open_clip {open_clip.__version__}, Pillow {PIL.__version__}, numpy {np.__version__}"
    )

    # Modes torchvision's transform cannot handle: recorded here, checked by the tests.
    for mode in ("La",):
        try:
            openai_transform(32)(Image.new(mode, (5, 4)))
            print(f"torchvision handles mode {mode!r}")
        except Exception as exc:  # noqa: BLE001 - we only report what happens
            print(f"torchvision fails on mode {mode!r}: {type(exc).__name__}: {exc}")

    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUTPUT, **arrays)
    print(f"open_clip vs openai-style transform, worst max|diff| over all cases: {worst_open_clip:g}")
    print(f"wrote {len(arrays)} arrays to {OUTPUT} ({OUTPUT.stat().st_size / 1e6:.2f} MB)")
    print(f"reference versions: {arrays['versions']}")
    assert worst_open_clip == 0.0


if __name__ == "__main__":
    main()
