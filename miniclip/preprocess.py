"""CLIP's image preprocessing with Pillow and NumPy, equal to the torchvision transform it replaces.

openai/CLIP builds its preprocessing in ``clip/clip.py`` as::

    def _transform(n_px):
        return Compose([
            Resize(n_px, interpolation=BICUBIC),
            CenterCrop(n_px),
            _convert_image_to_rgb,            # image.convert("RGB")
            ToTensor(),
            Normalize((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
        ])

open_clip's inference transform (``open_clip.transform.image_transform`` with the default
``resize_mode="shortest"``) is the same chain. Every step that touches pixels there is a Pillow call
made by torchvision (``Image.resize``, ``Image.crop``, ``Image.convert``), so
this module makes exactly those Pillow calls, with the sizes and offsets computed the way
torchvision computes them, and replaces only ``ToTensor``/``Normalize`` by the same float32
arithmetic in NumPy. The result is bit-for-bit what torchvision returns for the same Pillow
version (``tests/test_preprocess.py`` checks it against stored torchvision outputs).

The torchvision functions mirrored here (torchvision 0.29, ``torchvision/transforms``):

- ``functional._compute_resized_output_size``     -> :func:`resized_output_size`
- ``functional.resize`` / ``_functional_pil.resize`` -> :func:`resize_shorter_side`
- ``functional.center_crop`` / ``_functional_pil.crop`` -> :func:`center_crop`
- ``functional.to_tensor`` + ``functional.normalize`` -> :func:`to_normalized_array`
"""

from __future__ import annotations

import os
import warnings
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import ImageError
from .store import open_regular_file

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "center_crop",
    "load_image",
    "preprocess",
    "resize_shorter_side",
    "resized_output_size",
    "to_normalized_array",
]

# The per-channel RGB mean and standard deviation of CLIP's training images, as hard-coded in
# openai/CLIP clip.py `_transform` (and open_clip's OPENAI_DATASET_MEAN / OPENAI_DATASET_STD).
CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

# torchvision's Normalize turns mean/std into tensors of the image's dtype (float32) before
# subtracting and dividing, so the constants are rounded to float32 first, exactly as there.
_MEAN_F32 = np.asarray(CLIP_MEAN, dtype=np.float32).reshape(3, 1, 1)
_STD_F32 = np.asarray(CLIP_STD, dtype=np.float32).reshape(3, 1, 1)


# --------------------------------------------------------------------------------------------------
# Resize
# --------------------------------------------------------------------------------------------------


def resized_output_size(height: int, width: int, size: int) -> tuple[int, int]:
    """The ``(height, width)`` torchvision's ``Resize(size)`` (an int: the shorter side) gives an image.

    A line-for-line transcription of ``torchvision.transforms.functional._compute_resized_output_size``
    for the single-int ``size`` case CLIP uses (no ``max_size``): the shorter side becomes ``size`` and the
    longer one is ``int(size * long / short)``, i.e. the float product *truncated*, not rounded (so a 500x375
    image resized to 224 becomes 298x224, not 299x224).
    """
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    new_width, new_height = (new_short, new_long) if width <= height else (new_long, new_short)
    return new_height, new_width


def resize_shorter_side(image: Image.Image, size: int) -> Image.Image:
    """Resize so the shorter side is ``size``, as ``torchvision.transforms.Resize(size, BICUBIC)``.

    torchvision (``functional.resize``) hands a PIL image straight to ``Image.resize(size, BICUBIC)``
    (``_functional_pil.resize``), and returns the image untouched when the size would not change.
    All mode-specific behaviour therefore comes from Pillow itself, and we get the same by making
    the same call: Pillow resamples "1" and "P" images with NEAREST whatever filter is asked for,
    resizes "LA"/"RGBA" in premultiplied alpha, and applies bicubic to the raw values of every other
    mode (including palette indices of "PA", and the 16/32-bit values of "I;16", "I" and "F").
    Pillow's bicubic always antialiases when downscaling, which is why torchvision's ``antialias``
    flag does not matter for PIL input.
    """
    width, height = image.size
    new_height, new_width = resized_output_size(height, width, size)
    if (new_height, new_width) == (height, width):
        return image
    return image.resize((new_width, new_height), Image.Resampling.BICUBIC)


# --------------------------------------------------------------------------------------------------
# Center crop
# --------------------------------------------------------------------------------------------------


def center_offsets(width: int, height: int, size: int) -> tuple[int, int]:
    """(left, top) of the central ``size`` x ``size`` square, as ``torchvision.transforms.functional.center_crop``:
    ``int(round((side - size) / 2.0))`` on each axis, with Python's round-half-to-even."""
    return int(round((width - size) / 2.0)), int(round((height - size) / 2.0))


def center_crop(image: Image.Image, size: int) -> Image.Image:
    """The central ``size`` x ``size`` square, as ``torchvision.transforms.CenterCrop(size)`` on an image at
    least that large (after :func:`resize_shorter_side` it always is, so CenterCrop's zero padding of smaller
    images is never reached in CLIP and is not reproduced here)."""
    width, height = image.size
    if size > width or size > height:
        raise ValueError(f"center_crop needs an image of at least {size}x{size}, got {width}x{height}")
    left, top = center_offsets(width, height, size)
    # `_functional_pil.crop`: Pillow's box is (left, upper, right, lower), right/lower exclusive.
    return image.crop((left, top, left + size, top + size))


# --------------------------------------------------------------------------------------------------
# To array + normalize
# --------------------------------------------------------------------------------------------------


def to_normalized_array(image: Image.Image) -> np.ndarray:
    """An "RGB" PIL image as CLIP's input: float32 ``(3, H, W)``, ``(x / 255 - mean) / std``.

    ``ToTensor`` turns the uint8 HWC pixels into float32 CHW and divides by 255 (a true float32
    division; multiplying by a rounded 1/255 would differ in the last bit), then ``Normalize``
    subtracts the float32 mean and divides by the float32 std. The same operations in the same
    order and precision give the same bits.
    """
    if image.mode != "RGB":
        raise ValueError(f"expected an RGB image, got mode {image.mode!r}")
    pixels = np.asarray(image, dtype=np.uint8)  # (H, W, 3)
    chw = pixels.transpose(2, 0, 1).astype(np.float32) / np.float32(255)
    return np.ascontiguousarray((chw - _MEAN_F32) / _STD_F32, dtype=np.float32)


# --------------------------------------------------------------------------------------------------
# The whole transform
# --------------------------------------------------------------------------------------------------


def _check_image_size(image_size: int) -> int:
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)):
        raise TypeError(f"image_size must be an int, got {type(image_size).__name__}")
    if image_size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    return int(image_size)


def _as_pil(image: Image.Image | np.ndarray) -> Image.Image:
    """The input as a PIL image. NumPy arrays are accepted as uint8 HxW (gray), HxWx3 (RGB) or
    HxWx4 (RGBA), channels last, as ``PIL.Image.fromarray`` reads them."""
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (3, 4))):
            raise TypeError(
                "a NumPy image must be uint8 with shape (H, W), (H, W, 3) or (H, W, 4); "
                f"got dtype {image.dtype} and shape {image.shape}"
            )
        if image.shape[0] == 0 or image.shape[1] == 0:
            raise ImageError(f"image has no pixels: array shape {image.shape}")
        return Image.fromarray(np.ascontiguousarray(image))
    raise TypeError(f"expected a PIL.Image.Image (or a uint8 NumPy array), got {type(image).__name__}")


# A very elongated image would be resized to a huge strip only to keep its centre: a 178-byte 100000x1 PNG
# becomes 22,400,000x224 pixels (6 GB). When the resized long side would pass MAX_RESIZED_SIDE (15 MB of
# RGB at 224), only the centre is resampled (Pillow's `box`): the same filter on the same source pixels.
MAX_RESIZED_SIDE = 16384


def _resize_center_only(image: Image.Image, new_width: int, new_height: int, size: int) -> Image.Image:
    """resize_shorter_side + center_crop without the resized image: Pillow's resize with a `box` (in source
    pixels) computes each output pixel from the same source pixels with the same filter weights: the crop
    box's left edge, in resized pixels, times the scale W / new_width is where its source region starts."""
    width, height = image.size
    left, top = center_offsets(new_width, new_height, size)
    sx, sy = width / new_width, height / new_height
    box = (left * sx, top * sy, (left + size) * sx, (top + size) * sy)
    return image.resize((size, size), Image.Resampling.BICUBIC, box=box)


def preprocess(image: Image.Image | np.ndarray, image_size: int = 224) -> np.ndarray:
    """CLIP's preprocessing of one image: a C-contiguous float32 array of shape ``(3, S, S)``.

    Equal to openai/CLIP's ``_transform(image_size)`` (and open_clip's inference transform):
    shorter side resized to ``S`` with Pillow's bicubic, central ``S`` x ``S`` crop, conversion to
    RGB, scaling to [0, 1] and normalisation with :data:`CLIP_MEAN` / :data:`CLIP_STD`.

    ``image`` is a PIL image of any mode Pillow can convert to RGB, or, as a convenience, a uint8
    NumPy array laid out HxW, HxWx3 or HxWx4 (channels last). The conversion to RGB happens after
    the resize and crop, in the reference's order: Pillow resizes some modes differently ("P" with
    nearest neighbour, "LA"/"RGBA" premultiplied), so converting first would change the result.
    Alpha is dropped, not composited, again as in the reference. EXIF orientation is not applied.

    Raises:
        TypeError: ``image`` is neither a PIL image nor a suitable NumPy array.
        ImageError: the image has zero width or height, or its mode cannot be converted to RGB.
    """
    image_size = _check_image_size(image_size)
    image = _as_pil(image)
    width, height = image.size
    if width == 0 or height == 0:
        # torchvision would divide by zero computing the resized size.
        raise ImageError(f"image has no pixels: size {width}x{height}")

    new_height, new_width = resized_output_size(height, width, image_size)
    if max(new_height, new_width) <= MAX_RESIZED_SIDE:
        image = center_crop(resize_shorter_side(image, image_size), image_size)
    else:
        image = _resize_center_only(image, new_width, new_height, image_size)
    try:
        # openai/CLIP `_convert_image_to_rgb` / open_clip `MaybeConvertMode`: image.convert("RGB").
        rgb = image.convert("RGB")
    except ValueError as exc:
        # Pillow has no RGB conversion for a few in-memory-only modes (e.g. premultiplied "La");
        # torchvision's transform fails on them the same way. Say so instead of guessing a meaning.
        raise ImageError(f"cannot convert a mode {image.mode!r} image to RGB: {exc}") from exc
    return to_normalized_array(rgb)


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


def _describe(path_or_file: str | os.PathLike[str] | BinaryIO) -> str:
    if isinstance(path_or_file, (str, os.PathLike)):
        return os.fspath(path_or_file)
    name = getattr(path_or_file, "name", None)
    return name if isinstance(name, str) else f"<{type(path_or_file).__name__}>"


def load_image(
    path_or_file: str | os.PathLike[str] | BinaryIO,
    *,
    max_pixels: int | None = None,
) -> Image.Image:
    """Open and fully decode an image with Pillow; every failure becomes an :class:`ImageError`.

    Pillow's ``Image.open`` only reads the header, so a corrupt or truncated file would otherwise
    fail later, deep inside preprocessing; ``.load()`` forces the decode here. The image is returned
    as decoded (any mode); :func:`preprocess` converts it. A path must name a regular file (symlinks
    are followed): a folder, FIFO or device is refused without being read, as a FIFO would block forever.

    Decompression bombs: Pillow raises ``DecompressionBombError`` above ``2 * Image.MAX_IMAGE_PIXELS``
    but only *warns* (``DecompressionBombWarning``) between the limit and twice the limit; both
    become an :class:`ImageError` here. ``max_pixels`` sets a different limit for this call only
    (``Image.MAX_IMAGE_PIXELS`` is never modified): smaller to be stricter, or larger to accept
    images in Pillow's warning band; images beyond Pillow's hard limit are still refused by
    Pillow. ``max_pixels=None`` means Pillow's own ``Image.MAX_IMAGE_PIXELS``.
    """
    name = _describe(path_or_file)
    if isinstance(path_or_file, (str, os.PathLike)):
        # Opened here, not by Pillow, so that a FIFO or a device named `*.png` is refused instead of
        # blocking the open or reading forever (store.open_regular_file checks before opening).
        try:
            file = open_regular_file(path_or_file)
        except FileNotFoundError as exc:
            raise ImageError(f"{name}: no such file") from exc
        except OSError as exc:
            raise ImageError(f"{name}: cannot read the file: {exc.strerror or exc}") from exc
        with file:
            return _decode(file, name, max_pixels)
    return _decode(path_or_file, name, max_pixels)


def _decode(file: BinaryIO, name: str, max_pixels: int | None) -> Image.Image:
    limit = Image.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    try:
        # `catch_warnings` restores the warning filters on exit, so escalating Pillow's warning to
        # an exception stays local to this call (the filters are process-wide, so this is not
        # isolated from other threads calling warnings.simplefilter concurrently).
        with warnings.catch_warnings():
            if max_pixels is None:
                warnings.simplefilter("error", Image.DecompressionBombWarning)
            else:
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # we check below
            with Image.open(file) as image:
                width, height = image.size
                if limit is not None and width * height > limit:
                    raise ImageError(_bomb_message(name, width, height, limit))
                # Pillow never closes a file object it was given; the decoded pixels stay in `image`.
                image.load()
    except ImageError:
        raise
    except UnidentifiedImageError as exc:
        raise ImageError(f"{name}: not an image file Pillow can identify") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(
            f"{name}: refused as a possible decompression bomb ({exc}); pass max_pixels to change the limit"
        ) from exc
    except OSError as exc:
        # Pillow signals truncated or corrupt data with OSError ("image file is truncated",
        # "broken data stream", ...).
        raise ImageError(f"{name}: cannot read or decode the image (truncated or corrupt?): {exc}") from exc
    except (ValueError, SyntaxError, EOFError, IndexError, TypeError, ZeroDivisionError) as exc:
        # Some of Pillow's format plugins report malformed data with these instead of OSError.
        raise ImageError(f"{name}: cannot decode the image: {type(exc).__name__}: {exc}") from exc
    return image


def _bomb_message(name: str, width: int, height: int, limit: int) -> str:
    return (
        f"{name}: {width}x{height} = {width * height} pixels exceeds the limit of {limit} pixels "
        "(decompression bomb protection); pass max_pixels to change the limit"
    )
