"""Reading a .safetensors file without copying it.

The format (https://github.com/huggingface/safetensors, "Format" section) is
    [8 bytes: N, little-endian u64] [N bytes: JSON header] [data bytes]
and the header maps each tensor name to {"dtype", "shape", "data_offsets": [begin, end]}, offsets counted
from the start of the data bytes. We read the header ourselves and view each float32 tensor in place in a
read-only memory map, so a 600 MB checkpoint costs no 600 MB copy (`safetensors.numpy.load_file` copies
every tensor, and cannot represent bfloat16 in NumPy at all). float16, bfloat16 and float64 tensors are
converted to float32 once, since miniclip computes in float32.

Nothing here unpickles anything: the header is JSON and the data are raw little-endian numbers.
"""

from __future__ import annotations

import json
import math
import mmap
import os
from pathlib import Path

import numpy as np

from .errors import WeightsError
from .store import atomic_write

# safetensors dtype name -> NumPy dtype of the stored bytes ("<" = little-endian, as the format requires).
# bfloat16 has no NumPy dtype: its bytes are the high half of a float32, read as uint16 and widened below.
_STORED_DTYPES = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U8": np.dtype("u1"), "BOOL": np.dtype("?"),
}
FLOAT_DTYPES = ("F32", "F16", "BF16", "F64")
_MAX_HEADER_BYTES = 100 * 1024 * 1024  # the reference implementation refuses headers over 100 MB too
# NumPy arrays have at most 64 dimensions (32 before NumPy 2); CLIP's tensors have at most 4.
_MAX_DIMS = 32
# NumPy's limit on an array's size in bytes (a signed 64-bit count), checked with empty dimensions
# counted as 1 so that [0, 2**63] is refused too: NumPy cannot build that shape even with no data.
_MAX_ARRAY_BYTES = 2**63 - 1


def read_header(path: str | os.PathLike) -> tuple[dict, int, int]:
    """Parse and validate the header. Returns (header without __metadata__, data start, file size)."""
    header, data_start, size = _raw_header(Path(path))
    header.pop("__metadata__", None)
    for name, info in header.items():
        _check_entry(Path(path), name, info, size - data_start)
    return header, data_start, size


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The header's optional "__metadata__" (a str -> str map; e.g. {"format": "pt"}), {} when absent."""
    metadata = _raw_header(Path(path))[0].get("__metadata__")
    return metadata if isinstance(metadata, dict) else {}


def _raw_header(path: Path) -> tuple[dict, int, int]:  # -> (the header's JSON object, data start, file size)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise WeightsError(f"{path}: not a safetensors file (only {size} bytes long)")
            n = int.from_bytes(prefix, "little")
            if n == 0 or n > _MAX_HEADER_BYTES or 8 + n > size:
                raise WeightsError(
                    f"{path}: not a safetensors file, or truncated: the first 8 bytes announce a "
                    f"{n}-byte header but the file has {size} bytes")
            raw = f.read(n)
    except OSError as e:
        raise WeightsError(f"{path}: cannot read: {e.strerror or e}") from e
    header = parse_json(raw, f"{path}: not a safetensors file: header is not valid JSON")
    if not isinstance(header, dict):
        raise WeightsError(f"{path}: safetensors header is corrupt: expected a JSON object, "
                           f"found {type(header).__name__}")
    return header, 8 + n, size


def parse_json(raw: bytes | str, problem: str) -> object:
    """JSON from a file miniclip did not write, or WeightsError starting with `problem`. Besides invalid
    UTF-8 and JSON syntax this catches what a crafted file can make `json.loads` raise: ValueError for an
    integer of over 4300 digits (Python's limit on converting them) and RecursionError for arrays or
    objects nested thousands deep."""
    try:
        return json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else raw)
    except RecursionError:
        raise WeightsError(f"{problem} (nested too deeply)") from None
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors too
        raise WeightsError(f"{problem} ({e})") from None


def _check_entry(path: Path, name: str, info: object, data_bytes: int) -> None:
    bad = f"{path}: safetensors header is corrupt: tensor {short_repr(name)}"
    if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= info.keys():
        raise WeightsError(f"{bad} lacks dtype/shape/data_offsets")
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(dtype, str):
        raise WeightsError(f"{bad} has dtype {short_repr(dtype)}: expected a name such as \"F32\"")
    if dtype not in _STORED_DTYPES:
        raise WeightsError(f"{path}: tensor {short_repr(name)} has dtype {dtype[:40]}, which miniclip does not support "
                           f"(supported: {', '.join(FLOAT_DTYPES)} for weights)")
    # bool is an int in Python, so it is refused by name: [true, 2] is no shape.
    if not (isinstance(shape, list) and all(_is_count(d) for d in shape)):
        raise WeightsError(f"{bad} has shape {short_repr(shape)}: expected a list of integers >= 0")
    if len(shape) > _MAX_DIMS:
        raise WeightsError(f"{bad} has {len(shape)} dimensions (at most {_MAX_DIMS} are possible)")
    if math.prod(max(d, 1) for d in shape) * _STORED_DTYPES[dtype].itemsize > _MAX_ARRAY_BYTES:
        raise WeightsError(f"{bad} has shape {short_repr(shape)}, too large for any array")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o) for o in offsets)
            and offsets[0] <= offsets[1]):
        raise WeightsError(f"{bad} has data_offsets {short_repr(offsets)}: "
                           "expected [begin, end] with 0 <= begin <= end")
    if offsets[1] > data_bytes:
        raise WeightsError(f"{path}: file is truncated: tensor {short_repr(name)} ends at data byte {offsets[1]} "
                           f"but the file holds only {data_bytes} data bytes")
    expected = math.prod(shape) * _STORED_DTYPES[dtype].itemsize
    if offsets[1] - offsets[0] != expected:
        raise WeightsError(f"{bad}: {dtype} {shape} needs {expected} bytes, "
                           f"data_offsets span {offsets[1] - offsets[0]}")


def _is_count(value: object) -> bool:
    """An integer >= 0 from JSON (bool, which Python counts as an int, is not one)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def short_repr(value: object, width: int = 80) -> str:
    """repr of a header value, cut for error messages (a crafted header may hold megabytes)."""
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """All tensors of a .safetensors file: float tensors as float32 (in place when stored as float32),
    integer/bool tensors (e.g. transformers' `position_ids` buffers) in their own dtype. The memory map
    stays open for as long as any returned array is alive; the arrays are read-only."""
    header, data_start, size = read_header(path)
    if size == data_start:  # np.memmap refuses empty maps; a header-only file has only empty tensors
        data = np.zeros(0, dtype=np.uint8)
    else:
        data = np.asarray(np.memmap(path, dtype=np.uint8, mode="r"))  # plain ndarray view of the map
    tensors = {}
    for name, info in header.items():
        begin, end = (data_start + o for o in info["data_offsets"])
        stored = _STORED_DTYPES[info["dtype"]]
        array = data[begin:end].view(stored).reshape(info["shape"])
        if info["dtype"] in ("BF16", "F16", "F64"):
            stored_array = array
            if info["dtype"] == "BF16":  # bfloat16 is the top 16 bits of a float32: shift them into place
                array = (stored_array.astype(np.uint32) << 16).view(np.float32)
            else:
                array = stored_array.astype(np.float32)
            release(stored_array)  # the widened copy replaces the file's pages
        elif info["dtype"] == "F32" and not array.flags.aligned:
            array = array.copy()  # BLAS wants aligned data; headers padded to 8 bytes never get here
        tensors[name] = array
    return tensors


def write_safetensors(path: str | os.PathLike, tensors: dict[str, np.ndarray],
                      metadata: dict[str, str] | None = None) -> None:
    """Write `tensors` (float64/32/16 or integer NumPy arrays) as a .safetensors file, in the given order,
    atomically (store.atomic_write: a reader never sees a half-written file). The header is padded with
    spaces to a multiple of 8 bytes, as the reference writer does, so every float32 tensor can be mapped aligned."""
    names = {dtype: name for name, dtype in _STORED_DTYPES.items() if name != "BF16"}
    header: dict[str, object] = {"__metadata__": dict(metadata)} if metadata else {}
    arrays, offset = [], 0
    for name, tensor in tensors.items():
        array = np.asarray(tensor, order="C")  # (np.ascontiguousarray would make a 0-d scalar 1-d)
        stored = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
        if stored not in names:
            raise TypeError(f"{name}: cannot store dtype {array.dtype} in safetensors")
        array = array.astype(stored, copy=False)
        header[name] = {"dtype": names[stored], "shape": list(array.shape),
                        "data_offsets": [offset, offset + array.nbytes]}
        arrays.append(array)
        offset += array.nbytes
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-(8 + len(text)) % 8)
    atomic_write(path, [len(text).to_bytes(8, "little"), text,
                        *(memoryview(a.reshape(-1)).cast("B") for a in arrays if a.size)])


INDEX_SUFFIX = ".safetensors.index.json"  # a sharded checkpoint's index, e.g. model.safetensors.index.json


def read_index(path: str | os.PathLike) -> dict[str, Path]:
    """A sharded checkpoint's index (transformers' `save_pretrained` format: {"metadata": ...,
    "weight_map": {tensor name: shard file name}}) as {tensor name: shard path}. Shards must sit beside
    the index: a shard name with a directory part is refused rather than followed."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise WeightsError(f"{path}: cannot read the shard index: {e}") from e
    index = parse_json(raw, f"{path}: cannot read the shard index: not valid JSON")
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise WeightsError(f"{path}: a shard index needs a non-empty \"weight_map\" object "
                           "{tensor name: shard file name}")
    shards = {}
    for name, shard in weight_map.items():
        if not isinstance(shard, str) or Path(shard).name != shard or not shard.endswith(".safetensors"):
            raise WeightsError(f"{path}: tensor {name!r} maps to {shard!r}; expected the file name of a "
                               ".safetensors shard in the same directory")
        shards[name] = path.parent / shard
    return shards


def checkpoint_files(path: str | os.PathLike) -> list[Path]:
    """The .safetensors files behind `path`: itself, or the shards its index names (in index order)."""
    path = Path(path)
    if not path.name.endswith(INDEX_SUFFIX):
        return [path]
    return list(dict.fromkeys(read_index(path).values()))


def tensor_names(path: str | os.PathLike) -> list[str]:
    """The tensor names of a checkpoint, from its header or its shard index, without reading any data."""
    path = Path(path)
    return list(read_index(path)) if path.name.endswith(INDEX_SUFFIX) else list(read_header(path)[0])


def read_checkpoint(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """All tensors of a .safetensors file, or of every shard of a sharded checkpoint given by its index.
    Each shard is read as `read_safetensors` reads a file, and must hold exactly the tensors the index
    assigns to it: a missing shard, a tensor missing from its shard or one the index does not mention is
    an error, never silently skipped."""
    path = Path(path)
    if not path.name.endswith(INDEX_SUFFIX):
        return read_safetensors(path)
    assigned = read_index(path)
    tensors: dict[str, np.ndarray] = {}
    for shard in dict.fromkeys(assigned.values()):  # each shard once, in index order
        if not shard.is_file():
            raise WeightsError(f"{path}: shard {shard.name} is missing (the index assigns "
                               f"{sum(s == shard for s in assigned.values())} tensors to it)")
        found = read_safetensors(shard)
        expected = {name for name, s in assigned.items() if s == shard}
        if expected - found.keys():
            missing = sorted(expected - found.keys())
            raise WeightsError(f"{shard}: the index {path.name} assigns {len(missing)} tensors to this shard "
                               f"that it does not hold, e.g. {missing[0]!r}")
        if found.keys() - expected:
            extra = sorted(found.keys() - expected)
            raise WeightsError(f"{shard}: holds {len(extra)} tensors that the index {path.name} does not assign "
                               f"to it, e.g. {extra[0]!r}: the index and the shards do not belong together")
        tensors.update(found)
    return tensors


def release(array: np.ndarray) -> None:
    """Drop the file pages behind `array`, a view into a memory-mapped file, from this process's resident
    memory (madvise MADV_DONTNEED) once its values have been copied elsewhere. Always safe: the pages are
    read from the file again if touched. A no-op for arrays that are not views of a map."""
    mapped = array
    while isinstance(mapped.base, np.ndarray):
        mapped = mapped.base
    if not isinstance(mapped.base, mmap.mmap) or not hasattr(mmap, "MADV_DONTNEED") or array.nbytes == 0:
        return
    start = array.ctypes.data - mapped.ctypes.data
    first = -(-start // mmap.PAGESIZE) * mmap.PAGESIZE  # only whole pages inside the array
    end = (start + array.nbytes) // mmap.PAGESIZE * mmap.PAGESIZE
    if end > first:
        mapped.base.madvise(mmap.MADV_DONTNEED, first, end - first)
