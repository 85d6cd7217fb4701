"""The errors miniclip raises for bad input: each names the problem, never a deep NumPy traceback."""


class MiniclipError(Exception):
    """Base class of every error miniclip raises on purpose."""


class InputError(MiniclipError, ValueError):
    """A bad argument to a model call: images or token ids of the wrong shape, dtype or range."""


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


class BrokenIndexError(MiniclipError):
    """A search index directory that is missing, half-written or inconsistent: never read as if it were fine."""


class Locked(MiniclipError):
    """Another process holds a lock miniclip needs (store.file_lock); `holder` is its process id as it wrote it
    (may be empty)."""

    def __init__(self, path, holder: str):
        super().__init__(f"{path} is locked by process {holder or '(unknown)'}")
        self.path, self.holder = path, holder


class CudaUnavailableError(MiniclipError, ImportError):
    """backend="cupy" asked for where it cannot run: CuPy missing, no usable GPU or driver, or no CUDA
    compiler (NVVM) for the Numba kernels. An ImportError too, so backend="auto" passes over it."""
