"""The errors miniclip raises for bad input: each names the problem, never a deep NumPy traceback."""


class MiniclipError(Exception):
    """Base class of every error miniclip raises on purpose."""


class WeightsError(MiniclipError, ValueError):
    """A weights file or directory that cannot be used: not safetensors, truncated, unknown layout,
    missing or mis-shaped tensors, unsupported dtype, inconsistent config."""


class ImageError(MiniclipError, ValueError):
    """An image that cannot be decoded, or one so large that decoding it would be a decompression bomb."""


class TokenizerError(MiniclipError, ValueError):
    """Text that cannot be tokenized as asked, e.g. longer than the context length with truncate=False."""
