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


class DownloadError(MiniclipError, OSError):
    """Published weights that could not be fetched or are not on disk: hub unreachable, unknown repo or file
    (404), access refused (401/403: gated or private, see HF_TOKEN), checksum mismatch, disk full, or a model
    asked for offline that was never downloaded. The message says what to do next."""
