"""Deterministic test images for the preprocessing parity tests.

Used both by ``make_preprocess_fixtures.py`` (run once with torch/torchvision to store reference
outputs) and by ``test_preprocess.py`` (run by CI without torch), so both must build bit-identical
PIL images on any machine. Hence only integer arithmetic: the pixel values come from gradients,
stripes and an integer hash (no ``np.random``, whose streams may change between NumPy versions,
and no ``sin``/``exp``, whose last bits differ between platforms). Images are built from raw bytes
with ``Image.frombytes`` / ``Image.fromarray`` and explicit palettes, never with Pillow operations
(such as ``quantize``) whose output could change between Pillow versions.

This module has no tests of its own; pytest collects it only because of its name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

__all__ = ["CASES", "CROP_CASES", "RESIZE_SIZE_CASES", "ImageCase", "pattern"]


def _hash_u32(values: np.ndarray, seed: int) -> np.ndarray:
    """A fixed integer hash (the "lowbias32" mixer) of each value: reproducible pseudo-noise."""
    mask = np.uint64(0xFFFFFFFF)
    x = (values.astype(np.uint64) * np.uint64(0x9E3779B1) + np.uint64(seed * 0x85EBCA77 + 1)) & mask
    x ^= x >> np.uint64(16)
    x = (x * np.uint64(0x7FEB352D)) & mask
    x ^= x >> np.uint64(15)
    x = (x * np.uint64(0x846CA68B)) & mask
    x ^= x >> np.uint64(16)
    return x.astype(np.uint32)


def pattern(height: int, width: int, channels: int, seed: int) -> np.ndarray:
    """An int64 array (height, width, channels) of values in 0..255.

    A per-channel diagonal gradient (smooth content that survives resizing), stripes (sharp edges
    that make bicubic overshoot and exercise clipping) and +-20 of hashed noise (so that every
    pixel matters).
    """
    y, x, c = np.meshgrid(np.arange(height), np.arange(width), np.arange(channels), indexing="ij")
    gradient = x * (97 + 31 * c) // max(width, 1) + y * (151 - 17 * c) // max(height, 1)
    stripes = ((x // 5 + y // 7 + c) % 3) * 20
    index = (y * width + x) * channels + c
    noise = (_hash_u32(index, seed) % 41).astype(np.int64) - 20
    return np.clip(gradient + stripes + noise + 30, 0, 255).astype(np.int64)


def _from_u8(mode: str, values: np.ndarray) -> Image.Image:
    """A PIL image of an 8-bit-per-band mode from an (H, W, bands) array."""
    height, width = values.shape[:2]
    return Image.frombytes(mode, (width, height), np.ascontiguousarray(values, dtype=np.uint8).tobytes())


def _palette(seed: int, entries: int = 256, channels: int = 3) -> list[int]:
    return [int(v) for v in _hash_u32(np.arange(entries * channels), seed) % 256]


# --- builders, one per mode: (width, height, seed) -> PIL image ---------------------------------


def _rgb(w: int, h: int, seed: int) -> Image.Image:
    return _from_u8("RGB", pattern(h, w, 3, seed))


def _rgba(w: int, h: int, seed: int) -> Image.Image:
    values = pattern(h, w, 4, seed)
    values[..., 3] = (values[..., 3] * 3) % 256  # alpha covering 0..255, including fully transparent
    return _from_u8("RGBA", values)


def _l(w: int, h: int, seed: int) -> Image.Image:
    return _from_u8("L", pattern(h, w, 1, seed))


def _la(w: int, h: int, seed: int) -> Image.Image:
    values = pattern(h, w, 2, seed)
    values[..., 1] = (values[..., 1] * 3) % 256
    return _from_u8("LA", values)


def _bilevel(w: int, h: int, seed: int) -> Image.Image:
    # Mode "1" from a threshold; Image.fromarray of a bool array gives mode "1".
    return Image.fromarray(pattern(h, w, 1, seed)[..., 0] > 128)


def _palette_indices(w: int, h: int, seed: int) -> np.ndarray:
    return pattern(h, w, 1, seed)[..., 0]


def _p(w: int, h: int, seed: int) -> Image.Image:
    image = _from_u8("P", _palette_indices(w, h, seed))
    image.putpalette(_palette(seed + 1))
    return image


def _p_transparent_index(w: int, h: int, seed: int) -> Image.Image:
    # As Pillow decodes a GIF, or a PNG whose tRNS chunk marks one palette entry transparent.
    image = _p(w, h, seed)
    image.info["transparency"] = int(_palette_indices(w, h, seed)[0, 0])
    return image


def _p_transparent_bytes(w: int, h: int, seed: int) -> Image.Image:
    # As Pillow decodes a PNG whose tRNS chunk gives an alpha per palette entry.
    image = _p(w, h, seed)
    image.info["transparency"] = bytes(_palette(seed + 2))
    return image


def _p_rgba_palette(w: int, h: int, seed: int) -> Image.Image:
    image = _from_u8("P", _palette_indices(w, h, seed))
    image.putpalette(_palette(seed + 1, channels=4), "RGBA")
    return image


def _pa(w: int, h: int, seed: int) -> Image.Image:
    values = pattern(h, w, 2, seed)
    image = _from_u8("PA", values)
    image.putpalette(_palette(seed + 1))
    return image


def _cmyk(w: int, h: int, seed: int) -> Image.Image:
    return _from_u8("CMYK", pattern(h, w, 4, seed))


def _ycbcr(w: int, h: int, seed: int) -> Image.Image:
    return _from_u8("YCbCr", pattern(h, w, 3, seed))


def _hsv(w: int, h: int, seed: int) -> Image.Image:
    return _from_u8("HSV", pattern(h, w, 3, seed))


def _lab(w: int, h: int, seed: int) -> Image.Image:
    return _from_u8("LAB", pattern(h, w, 3, seed))


def _rgbx(w: int, h: int, seed: int) -> Image.Image:
    return _from_u8("RGBX", pattern(h, w, 4, seed))


def _int32(w: int, h: int, seed: int) -> Image.Image:
    # Mode "I": values -200..565, so the conversion to 8 bits clips at both ends.
    values = pattern(h, w, 1, seed)[..., 0] * 3 - 200
    return Image.frombytes("I", (w, h), values.astype("<i4").tobytes(), "raw", "I")


def _int16(mode: str) -> Callable[[int, int, int], Image.Image]:
    def build(w: int, h: int, seed: int) -> Image.Image:
        # 16-bit greyscale as PNG/TIFF decode it; values 0..~1000 straddle 255 (clipped on conversion).
        values = pattern(h, w, 1, seed)[..., 0] * 4
        dtype = ">u2" if mode == "I;16B" else "<u2"
        return Image.frombytes(mode, (w, h), values.astype(dtype).tobytes())

    return build


def _float32(w: int, h: int, seed: int) -> Image.Image:
    # Mode "F": values with exact binary fractions, -100 .. ~305.
    values = (pattern(h, w, 1, seed)[..., 0] * 6 - 400) / 4.0
    return Image.frombytes("F", (w, h), values.astype("<f4").tobytes(), "raw", "F;32F")


@dataclass(frozen=True)
class ImageCase:
    """One test image and the target sizes S to run CLIP's transform at."""

    name: str
    build: Callable[[int, int, int], Image.Image]
    width: int
    height: int
    seed: int
    sizes: tuple[int, ...]

    def image(self) -> Image.Image:
        return self.build(self.width, self.height, self.seed)


def _cases() -> list[ImageCase]:
    cases = [
        # RGB: aspect ratios, odd sizes (crop offsets round half to even), tiny and very elongated
        # images (extreme upscaling along one axis), and sizes where the resize is skipped.
        ImageCase("rgb_64x48", _rgb, 64, 48, 1, (32, 64, 96)),
        ImageCase("rgb_48x64", _rgb, 48, 64, 2, (32, 96)),
        ImageCase("rgb_97x131", _rgb, 97, 131, 3, (32, 64)),
        ImageCase("rgb_131x97", _rgb, 131, 97, 4, (33,)),
        ImageCase("rgb_500x375", _rgb, 500, 375, 5, (224, 336)),
        ImageCase("rgb_32x32", _rgb, 32, 32, 6, (32, 64)),
        ImageCase("rgb_32x45", _rgb, 32, 45, 7, (32,)),
        ImageCase("rgb_33x33", _rgb, 33, 33, 8, (32,)),
        ImageCase("rgb_1x1", _rgb, 1, 1, 9, (32,)),
        ImageCase("rgb_2x3", _rgb, 2, 3, 10, (32,)),
        ImageCase("rgb_3x2", _rgb, 3, 2, 11, (31,)),
        ImageCase("rgb_1000x3", _rgb, 1000, 3, 12, (32,)),
        ImageCase("rgb_3x1000", _rgb, 3, 1000, 13, (32,)),
        ImageCase("rgb_777x1", _rgb, 777, 1, 14, (16,)),
        # Every mode Pillow opens, plus a few in-memory ones.
        ImageCase("1_61x47", _bilevel, 61, 47, 20, (32,)),
        ImageCase("1_3x1000", _bilevel, 3, 1000, 21, (32,)),
        ImageCase("L_61x47", _l, 61, 47, 22, (32, 64)),
        ImageCase("L_2x3", _l, 2, 3, 23, (32,)),
        ImageCase("LA_61x47", _la, 61, 47, 24, (32,)),
        ImageCase("LA_1x1", _la, 1, 1, 25, (32,)),
        ImageCase("P_61x47", _p, 61, 47, 26, (32,)),
        ImageCase("P_2x3", _p, 2, 3, 27, (32,)),
        ImageCase("P_300x400", _p, 300, 400, 45, (224,)),
        ImageCase("P_tindex_61x47", _p_transparent_index, 61, 47, 28, (32,)),
        ImageCase("P_tbytes_61x47", _p_transparent_bytes, 61, 47, 29, (32,)),
        ImageCase("P_rgbapal_61x47", _p_rgba_palette, 61, 47, 30, (32,)),
        ImageCase("PA_61x47", _pa, 61, 47, 31, (32,)),
        ImageCase("RGBA_61x47", _rgba, 61, 47, 32, (32, 64)),
        ImageCase("RGBA_1000x3", _rgba, 1000, 3, 33, (32,)),
        ImageCase("RGBX_61x47", _rgbx, 61, 47, 34, (32,)),
        ImageCase("CMYK_61x47", _cmyk, 61, 47, 35, (32,)),
        ImageCase("YCbCr_61x47", _ycbcr, 61, 47, 36, (32,)),
        ImageCase("HSV_61x47", _hsv, 61, 47, 37, (32,)),
        ImageCase("LAB_61x47", _lab, 61, 47, 38, (32,)),
        ImageCase("I_61x47", _int32, 61, 47, 39, (32,)),
        ImageCase("I_2x3", _int32, 2, 3, 40, (32,)),
        ImageCase("I;16_61x47", _int16("I;16"), 61, 47, 41, (32,)),
        ImageCase("I;16B_61x47", _int16("I;16B"), 61, 47, 42, (32,)),
        ImageCase("F_61x47", _float32, 61, 47, 43, (32,)),
        ImageCase("F_1x1", _float32, 1, 1, 44, (32,)),
    ]
    names = [case.name for case in cases]
    assert len(names) == len(set(names)), "duplicate case names"
    return cases


CASES: list[ImageCase] = _cases()

# CenterCrop on its own, including crops larger than the image (torchvision zero-pads; CLIP's own
# pipeline never reaches that branch because the resize makes the shorter side exactly S).
CROP_CASES: list[tuple[ImageCase, int]] = [
    (ImageCase("crop_rgb_20x10", _rgb, 20, 10, 50, ()), 16),
    (ImageCase("crop_rgb_9x7", _rgb, 9, 7, 51, ()), 12),
    (ImageCase("crop_rgb_40x7", _rgb, 40, 7, 52, ()), 11),
    (ImageCase("crop_rgb_25x30", _rgb, 25, 30, 53, ()), 10),
    (ImageCase("crop_P_9x7", _p, 9, 7, 54, ()), 12),
    (ImageCase("crop_L_5x6", _l, 5, 6, 55, ()), 8),
    (ImageCase("crop_LA_5x6", _la, 5, 6, 56, ()), 9),
    (ImageCase("crop_RGBA_6x5", _rgba, 6, 5, 57, ()), 9),
    (ImageCase("crop_1_6x5", _bilevel, 6, 5, 58, ()), 9),
    (ImageCase("crop_F_6x5", _float32, 6, 5, 59, ()), 7),
    (ImageCase("crop_I;16_6x5", _int16("I;16"), 6, 5, 60, ()), 7),
    (ImageCase("crop_CMYK_6x5", _cmyk, 6, 5, 61, ()), 8),
]

# (height, width, size, max_size) for torchvision's resized-output-size rule; max_size 0 = None.
RESIZE_SIZE_CASES: list[tuple[int, int, int, int]] = [
    (h, w, s, m)
    for h, w in [
        (1, 1),
        (2, 3),
        (3, 2),
        (375, 500),
        (500, 375),
        (3, 1000),
        (1000, 3),
        (7, 7),
        (224, 300),
        (299, 224),
        (481, 640),
        (640, 427),
        (1, 777),
        (333, 1000),
        (1001, 999),
    ]
    for s in (1, 16, 31, 32, 224, 336)
    for m in (0, s + 1, 400, 1000)
    if m == 0 or m > s
]
