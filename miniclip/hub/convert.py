"""Half-size copies of checkpoints: `miniclip convert SRC DST --dtype float16|bfloat16`.

The copy keeps the file's layout and tensor names (so transformers, open_clip and miniclip all read it as
they read the original), converts every floating-point tensor to the new dtype, leaves integer tensors
(transformers' `position_ids`) as they are, and copies the config file beside it. miniclip still
computes in float32: loading widens each tensor once, so the cost is only the rounding of the weights
(docs/performance.md, "float16/bfloat16 storage", states what it does to the outputs).

`safetensors.numpy` cannot write bfloat16 (NumPy has no such dtype), so the file is written here, following
the format (https://github.com/huggingface/safetensors, "Format"): an 8-byte little-endian header length N,
N bytes of JSON header (padded with spaces so the data start at a multiple of 8), then each tensor's raw
little-endian bytes at its `data_offsets`.

Every output is written through `miniclip.store.atomic_writer` (a fresh, exclusively created temporary
file, renamed into place): an interrupted convert leaves the old file or none, never a mixture. One convert
at a time writes into a given output (a lock beside it; a second is refused), and an existing output is
replaced only when asked (`overwrite=True`, `--force`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..errors import MiniclipError, WeightsError
from ..safetensors_file import INDEX_SUFFIX, checkpoint_files, read_header, read_safetensors, tensor_names
from ..store import Locked, atomic_write_bytes, atomic_writer, file_lock
from ..weights import LAYOUT_FILES, detect_layout, find_weights_file
from .download import resolve_source

DTYPES = {"float16": "F16", "bfloat16": "BF16", "float32": "F32"}  # --dtype -> safetensors dtype name
_STORED = {"F16": np.dtype("<f2"), "BF16": np.dtype("<u2"), "F32": np.dtype("<f4")}  # bf16: raw bit patterns
_BLOCK = 1 << 22  # elements converted at a time: bounded temporaries even for the 38M-entry token embedding


def float32_to_bfloat16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), rounding to nearest, ties to even (what PyTorch's
    `.to(torch.bfloat16)` does). bfloat16 is the top half of a float32: add just under half of the dropped
    half's range, plus the kept part's lowest bit (so that exact ties go to the even neighbour), then drop it."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = ((bits + (np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1)))) >> np.uint32(16))
    out = rounded.astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():  # rounding could carry a NaN's payload into the exponent: keep the sign, make it a quiet NaN
        out[nan] = ((bits[nan] >> np.uint32(16)) | np.uint32(0x0040)).astype(np.uint16)
    return out


def _convert_block(name: str, x: np.ndarray, target: str) -> np.ndarray:
    if target == "F32":
        return x.astype("<f4")
    with np.errstate(over="ignore"):  # overflow is detected below, with a message saying what to do
        out = float32_to_bfloat16_bits(x) if target == "BF16" else x.astype("<f2")
    widened = (out.astype(np.uint32) << 16).view(np.float32) if target == "BF16" else out.astype(np.float32)
    overflow = np.isinf(widened) & np.isfinite(x)
    if overflow.any():
        biggest = float(np.abs(x[overflow]).max())
        raise MiniclipError(f"tensor {name!r} holds {biggest:.4g}, beyond the range of float16 (which ends at "
                            "65504): use --dtype bfloat16, which has float32's range")
    return out


def _blocks(name: str, tensor: np.ndarray, target: str | None) -> Iterator[bytes | memoryview]:
    """The bytes of one tensor in its new dtype, a block at a time (the source stays memory-mapped)."""
    flat = tensor.reshape(-1)
    if target is None:  # not floating point: unchanged
        yield memoryview(np.ascontiguousarray(flat).astype(flat.dtype.newbyteorder("<"), copy=False)).cast("B")
        return
    for start in range(0, flat.size, _BLOCK):
        yield memoryview(_convert_block(name, flat[start:start + _BLOCK], target)).cast("B")


def _raw_metadata(path: Path) -> dict:
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        return json.loads(f.read(n)).get("__metadata__") or {}


def write_converted(src: Path, dst: Path, dtype: str) -> tuple[int, dict[str, int]]:
    """Write `src`'s tensors to `dst` with every float tensor in `dtype` (a key of DTYPES). Returns the
    file size and how many tensors each stored dtype ended up with."""
    target = DTYPES[dtype]
    stored, _, _ = read_header(src)  # stored dtypes, to tell float tensors from integer ones
    tensors = read_safetensors(src)  # float32 views of float tensors (memory-mapped when stored float32)
    header: dict[str, object] = {"__metadata__": {"format": "pt", **_raw_metadata(src)}}
    plan, offset, counts = [], 0, {}
    for name, tensor in tensors.items():  # the source's order
        is_float = stored[name]["dtype"] in ("F32", "F16", "BF16", "F64")
        out_name = target if is_float else stored[name]["dtype"]
        itemsize = _STORED[target].itemsize if is_float else tensor.dtype.itemsize
        size = math.prod(tensor.shape) * itemsize
        header[name] = {"dtype": out_name, "shape": list(tensor.shape), "data_offsets": [offset, offset + size]}
        plan.append((name, tensor, target if is_float else None, size))
        counts[out_name] = counts.get(out_name, 0) + 1
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-(8 + len(text)) % 8)  # pad so the data (and every 8-byte-aligned offset) start aligned
    with atomic_writer(dst) as f:  # no half-written file under the final name, ever
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        for name, tensor, to, size in plan:
            written = sum(f.write(block) for block in _blocks(name, tensor, to))
            assert written == size, (name, written, size)
    return dst.stat().st_size, counts


def convert(src: str | os.PathLike, dst: str | os.PathLike, dtype: str = "float16", *,
            overwrite: bool = False) -> Path:
    """Convert a checkpoint (a .safetensors file, a sharded checkpoint's index, a directory holding one, or a
    model name / hub repo id, downloaded if need be) to `dtype`, keeping its layout. `dst` is a directory
    (the files keep their names) or a .safetensors path; the config file beside the source is copied beside
    the result. Existing outputs are refused unless `overwrite`; a convert already writing into the same
    output makes this one fail at once. Returns the new weights file (or index)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    src_file = find_weights_file(resolve_source(src))
    layout = detect_layout(dict.fromkeys(tensor_names(src_file)), str(src_file))
    sharded = src_file.name.endswith(INDEX_SUFFIX)
    dst = Path(dst).expanduser()
    if sharded and dst.suffix == ".safetensors":
        raise WeightsError(f"{dst}: {src_file.name} is a sharded checkpoint; give a directory for its shards")
    dst_file = dst if dst.suffix == ".safetensors" else dst / src_file.name
    if dst_file.resolve() == src_file.resolve():
        raise WeightsError(f"{dst_file}: the destination is the source file; give another directory or name")
    dst_file.parent.mkdir(parents=True, exist_ok=True)
    config_name = LAYOUT_FILES[layout][1]
    config, target_config = src_file.parent / config_name, dst_file.parent / config_name
    copy_config = config.is_file() and target_config.resolve() != config.resolve()
    outputs = [dst_file, *(dst_file.parent / shard.name for shard in checkpoint_files(src_file) if sharded),
               *([target_config] if copy_config else [])]
    lock = dst_file.with_name(f".{dst_file.name}.lock")
    try:
        with file_lock(lock, wait=False):  # two converts into one output would interleave their files
            existing = [str(path) for path in outputs if path.exists() or path.is_symlink()]
            if existing and not overwrite:
                raise WeightsError(f"{', '.join(existing)} already exist(s): pass --force (overwrite=True) to "
                                   "replace, or give another destination")
            _convert_locked(src_file, dst_file, dtype, layout, sharded, config if copy_config else None,
                            target_config)
    except Locked as e:
        raise MiniclipError(f"another convert (process {e.holder or 'unknown'}) is writing {dst_file}: wait for it "
                            "to finish, or give another destination") from None
    return dst_file


def _convert_locked(src_file: Path, dst_file: Path, dtype: str, layout: str, sharded: bool, config: Path | None,
                    target_config: Path) -> None:
    if sharded:  # each shard converted on its own, then the index (same map, new total size) beside them
        data_bytes = 0  # tensor_names above has validated the index before anything is written
        for shard in checkpoint_files(src_file):
            write_converted(shard, dst_file.parent / shard.name, dtype)
            _, data_start, size = read_header(dst_file.parent / shard.name)
            data_bytes += size - data_start
        index = json.loads(src_file.read_text(encoding="utf-8"))
        index["metadata"] = {**(index.get("metadata") or {}), "total_size": data_bytes}
        atomic_write_bytes(dst_file, (json.dumps(index, indent=2) + "\n").encode("utf-8"))
    else:
        write_converted(src_file, dst_file, dtype)
    if config is not None:
        data = config.read_bytes()
        if layout == "transformers":  # transformers reads the storage dtype from here (torch_dtype="auto")
            settings = json.loads(data)
            if any(key in settings for key in ("torch_dtype", "dtype")):
                data = (json.dumps(settings | {key: dtype for key in ("torch_dtype", "dtype") if key in settings},
                                   indent=2) + "\n").encode("utf-8")
        atomic_write_bytes(target_config, data)
