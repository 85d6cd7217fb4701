"""The image index: every image under a folder embedded once, kept on disk for search (search.py).

    miniclip index photos/ --out photos.index            # embeds every image under photos/, recursively

The index is a directory::

    manifest.json             what the rows are: files (path, size, mtime), model fingerprint, checksums
    embeddings-<hash>.npy     float32 [N, E], row i = normalized embedding of files[i]
    part-<hash>.npy           (while a build runs, or after it was interrupted) checkpointed rows

and it is built so that an interruption never leaves something half-written that gets used:

- every file is written to a temporary name, fsynced, then renamed into place (``os.replace`` is atomic);
- embeddings files are named by the hash of their content and never overwritten; the manifest, which names
  the exact files and their SHA-256, is written last, so it only ever points at complete files;
- every ``checkpoint_every`` batches the rows embedded so far go into an extra ``part-<hash>.npy`` file and
  the manifest is rewritten to list them, marked ``"complete": false``: a killed run loses at most one
  chunk, and re-running the same command picks up where it stopped (an exception or Ctrl-C saves the
  current chunk too);
- reading checks the manifest's format, every field's type, every file's size, shape and checksum, and the
  row count, and names what is wrong instead of returning mismatched rows; ``miniclip index`` rebuilds a
  damaged index. ``load_index(mmap=True)`` maps the embeddings instead of reading them (an index of a
  million images is 2 GB): it checks every file's size, header and shape, and the SHA-256 (read in chunks,
  at about 0.5 GB/s) only for files up to ``VERIFY_LIMIT`` bytes or when asked (``verify=True``), see
  docs/scale.md. A manifest is not obeyed blindly: it may name only the index's own file names
  (``embeddings-<16 hex>.npy``, ``part-<16 hex>.npy``) inside its folder, entries only relative paths inside
  the indexed folder, and only regular files are read (a FIFO or /dev/zero would block or never end), up
  to the size the manifest records, with the .npy header checked before any memory is allocated;
- a folder is an index only if its ``manifest.json`` is a miniclip manifest (its ``format`` key): a build
  refuses any other non-empty folder, and deletes only files a manifest of the index named. Before writing
  a data file, a build names it in the manifest's ``pending`` list, so a killed run leaves no file the next
  run would not know to delete;
- readers during a build: the manifest is the one switch, and a build deletes the files the previous
  manifest used only after the new one is in place; a reader that finds a listed file gone reads the new
  manifest (``load_index``). It gets a whole index: the previous one, a checkpoint (``complete`` false) or
  the new one.

File names that are not UTF-8 are kept: Python reads them as lone surrogates (PEP 383), which the manifest
holds as JSON escapes (``"caf\\udce9.png"``). Names are shown escaped on the terminal, on the contact sheet
and on the page (``terminal.printable``).

Re-running ``miniclip index`` is incremental: a file whose relative path, size and modification time
(nanoseconds) match the manifest keeps its row; new or changed files are embedded; deleted files are
dropped. A different model (see ``zeroshot.model_fingerprint``) invalidates every row.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import BrokenIndexError, ImageError, Locked, MiniclipError
from ..model import normalize
from ..preprocess import load_image
from ..store import atomic_write_bytes, file_lock, npy_bytes, open_regular_file, temporary_target
from ..terminal import Progress
from .zeroshot import model_fingerprint

__all__ = [
    "IMAGE_EXTENSIONS",
    "BrokenIndexError",
    "BuildReport",
    "Entry",
    "Index",
    "build_index",
    "find_images",
    "iter_image_embeddings",
    "load_index",
]

#: Files with these extensions (any case) are treated as images; everything else is ignored, not "skipped".
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".bmp", ".webp", ".tif",
                              ".tiff", ".ppm", ".pgm", ".pbm", ".pnm", ".ico", ".tga"})
MANIFEST = "manifest.json"
#: load_index(mmap=True) checks the SHA-256 of embeddings files up to this size by default (~0.25 s here).
VERIFY_LIMIT = 128 << 20
FORMAT = "miniclip-index"
VERSION = 1


@dataclass(frozen=True, slots=True)  # slots: 56 bytes an entry instead of ~350 (an index may list millions)
class Entry:
    """One indexed image: its path relative to the indexed folder ("/"-separated), size and mtime."""

    path: str
    size: int
    mtime_ns: int


@dataclass
class Index:
    """A loaded index: ``embeddings[i]`` (unit L2 norm) belongs to ``root / entries[i].path``."""

    directory: Path
    root: Path
    entries: list[Entry]
    embeddings: np.ndarray  # [N, E] float32
    model: str  # zeroshot.model_fingerprint of the model that embedded the images
    complete: bool  # False: an interrupted run's checkpoint, holding only the images embedded so far
    manifest: dict

    def paths(self) -> list[Path]:
        return [self.root / e.path for e in self.entries]


@dataclass
class BuildReport:
    """What ``build_index`` did."""

    index: Index | None = None  # the index as written (None only while building)
    embedded: int = 0  # images embedded in this run
    reused: int = 0  # images whose rows were kept from the previous index
    removed: int = 0  # rows dropped because their file is gone or changed
    ignored: int = 0  # files without an image extension
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (relative path, reason): unreadable images
    notes: list[str] = field(default_factory=list)  # e.g. "the previous index was damaged: ..."


# --------------------------------------------------------------------------------------------------
# Finding and embedding images
# --------------------------------------------------------------------------------------------------


def find_images(root: str | os.PathLike, exclude: Sequence[str | os.PathLike] = ()) -> tuple[list[Entry], int]:
    """Every image file under ``root``, recursively, sorted by relative path, and the number of non-image
    files ignored. Hidden files and folders (names starting with ".") and the ``exclude`` folders (e.g. an
    index stored inside the folder) are left out; symlinked folders are not followed (no cycles). A FIFO or a
    device named like an image is listed too, and reported as unreadable when it is read: load_image refuses
    anything but a regular file without opening it."""
    root = Path(root)
    if not root.is_dir():
        raise MiniclipError(f"{root}: not a folder")
    excluded = {os.path.realpath(p) for p in exclude}
    entries, ignored = [], 0
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                         and os.path.realpath(os.path.join(folder, d)) not in excluded)
        for name in sorted(files):
            if name.startswith("."):
                continue
            if os.path.splitext(name)[1].lower() not in IMAGE_EXTENSIONS:
                ignored += 1
                continue
            full = os.path.join(folder, name)
            try:
                st = os.stat(full)
            except OSError:  # a dangling symlink: reported as unreadable when it is read
                size, mtime_ns = -1, -1
            else:
                size, mtime_ns = st.st_size, st.st_mtime_ns
            entries.append(Entry(Path(os.path.relpath(full, root)).as_posix(), size, mtime_ns))
    entries.sort(key=lambda e: e.path)
    return entries, ignored


def _read_pixels(path: Path, preprocess) -> np.ndarray:
    try:
        return preprocess(load_image(path))
    except ImageError as e:
        raise ImageError(str(e).removeprefix(f"{path}: ")) from e
    except OSError as e:  # load_image maps most; keep any other OS-level failure a per-file problem
        raise ImageError(f"cannot read the file: {e}") from e


def iter_image_embeddings(model, preprocess, root: Path, entries: Sequence[Entry], batch_size: int
                          ) -> Iterator[tuple[list[Entry], np.ndarray, list[tuple[str, str]]]]:
    """Embed ``entries`` (relative to ``root``) ``batch_size`` at a time. Yields, per batch, the entries
    that were read, their normalized embeddings [b, E] and the (path, reason) of the ones that could not
    be read, so that one bad file never stops a run."""
    if batch_size < 1:
        raise MiniclipError(f"--batch-size must be at least 1, got {batch_size}")
    for start in range(0, len(entries), batch_size):
        ok, pixels, bad = [], [], []
        for entry in entries[start:start + batch_size]:
            try:
                pixels.append(_read_pixels(root / entry.path, preprocess))
                ok.append(entry)
            except ImageError as e:
                bad.append((entry.path, str(e)))
        if pixels:
            features = normalize(np.asarray(model.encode_image(np.stack(pixels)), dtype=np.float32))
        else:
            features = np.zeros((0, model.config.embed_dim), np.float32)
        yield ok, features.astype(np.float32, copy=False), bad


# --------------------------------------------------------------------------------------------------
# Reading and writing the index directory
# --------------------------------------------------------------------------------------------------

#: The names of the files an index holds besides its manifest: its own names only, plain names inside its
#: folder. A manifest that names anything else (`/dev/zero`, `../../etc/passwd`) is damaged, not obeyed.
DATA_FILE = re.compile(r"(embeddings|part)-[0-9a-f]{16}\.npy")
MAX_EMBED_DIM = 1 << 16  # far above any CLIP's (ViT-bigG: 1280); bounds what a damaged manifest can ask for
_READ_ATTEMPTS = 8  # see load_index


def _encode_rows(prefix: str, rows: np.ndarray) -> tuple[bytes, dict]:
    """Rows as the bytes of ``<prefix>-<content hash>.npy`` and the manifest's record of that file. The name
    depends on the content, so a file a manifest points to is never overwritten by different rows."""
    data = npy_bytes(rows)
    digest = hashlib.sha256(data).hexdigest()
    return data, {"file": f"{prefix}-{digest[:16]}.npy", "rows": int(rows.shape[0]), "bytes": len(data),
                  "sha256": digest}


def _data_files(directory: Path) -> list[str]:
    """Names in ``directory`` that look like an index's data files (for messages: never deleted on looks)."""
    try:
        return sorted(p.name for p in directory.iterdir() if DATA_FILE.fullmatch(p.name))
    except OSError:
        return []


def _manifest_bytes(directory: Path) -> bytes | None:
    """The manifest's bytes; None when there is none; BrokenIndexError when it is not a regular file."""
    path = directory / MANIFEST
    try:
        with open_regular_file(path) as f:
            return f.read()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise BrokenIndexError(f"{path}: cannot be read ({e.strerror or e})") from e


# What _write_manifest writes first: a miniclip manifest is recognised by it even when it is cut short.
_MANIFEST_START = re.compile(rb'\s*\{\s*"format"\s*:\s*"' + re.escape(FORMAT.encode()) + rb'"')


def _is_our_manifest(raw: bytes) -> bool:
    """Whether ``raw`` is a miniclip index manifest (by its format key), intact or damaged."""
    if _MANIFEST_START.match(raw):
        return True
    try:
        manifest = json.loads(raw)
    except (ValueError, RecursionError):
        return False
    return isinstance(manifest, dict) and manifest.get("format") == FORMAT


def _listed_files(raw: bytes | None) -> set[str]:
    """The data files a manifest names (its embeddings and its pending files), read as leniently as possible:
    these, and only these, are the files a build may delete."""
    try:
        manifest = json.loads(raw) if raw is not None else {}
    except (ValueError, RecursionError):
        return set()
    if not isinstance(manifest, dict):
        return set()
    shards, pending = manifest.get("embeddings"), manifest.get("pending")
    names = [s.get("file") for s in shards if isinstance(s, dict)] if isinstance(shards, list) else []
    names += pending if isinstance(pending, list) else []
    return {n for n in names if isinstance(n, str) and DATA_FILE.fullmatch(n)}


def _json_bytes(manifest: dict) -> bytes:
    """The manifest as UTF-8 JSON. A file name that is not valid UTF-8 reaches Python as lone surrogates
    (PEP 383 "surrogateescape", e.g. b"caf\\xe9.png" -> "caf\\udce9.png"), which UTF-8 cannot encode: they
    are written as JSON escapes ("\\udce9"), which json.loads turns back into the same name, hence the same
    bytes on disk. Every other character is written as itself."""
    text = json.dumps(manifest, indent=1, ensure_ascii=False)
    return re.sub("[\ud800-\udfff]", lambda m: f"\\u{ord(m.group()):04x}", text).encode("utf-8")


class _Vanished(Exception):
    """A file the manifest lists is gone: a build replaced the manifest meanwhile (see load_index)."""


def _field(record, key: str, kind: type, where: str):
    value = record.get(key) if isinstance(record, dict) else None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"{where}{key!r} missing or not {'an' if kind is int else 'a'} {kind.__name__}")
    return value


def _relative_path(path: str) -> str:
    """An entry's path as the manifest must give it: relative, "/"-separated, inside the indexed folder."""
    parts = path.split("/")
    if (not path or "\0" in path or any(p in ("", ".", "..") for p in parts)
            or any(sep in path for sep in (os.sep, os.altsep) if sep and sep != "/")
            or Path(path).is_absolute() or Path(path).drive):
        raise ValueError(f"file path {path!r} is not a relative path inside the indexed folder")
    return path


def _parse_manifest(manifest: dict) -> tuple[list[Entry], int, list[dict], Path, str, bool]:
    """Check every field a reader uses; ValueError naming the first bad one."""
    if not isinstance(manifest.get("files"), list) or not isinstance(manifest.get("embeddings"), list):
        raise ValueError("'files' or 'embeddings' missing or not a list")
    embed_dim = _field(manifest, "embed_dim", int, "")
    count = _field(manifest, "count", int, "")
    root, model = Path(_field(manifest, "root", str, "")), _field(manifest, "model", str, "")
    complete = _field(manifest, "complete", bool, "")
    if not 1 <= embed_dim <= MAX_EMBED_DIM or count < 0 or not root.is_absolute():
        raise ValueError(f"embed_dim {embed_dim}, count {count} or root {str(root)!r} out of range")
    entries = [Entry(_relative_path(_field(f, "path", str, "file ")), _field(f, "size", int, "file "),
                     _field(f, "mtime_ns", int, "file ")) for f in manifest["files"]]
    if len({e.path for e in entries}) != len(entries):
        raise ValueError("a file is listed twice")
    shards = []
    for shard in manifest["embeddings"]:
        name, rows = _field(shard, "file", str, "embeddings "), _field(shard, "rows", int, "embeddings ")
        size, sha256 = _field(shard, "bytes", int, "embeddings "), _field(shard, "sha256", str, "embeddings ")
        if not DATA_FILE.fullmatch(name):
            raise ValueError(f"embeddings file {name!r} is not an index file's name")
        header = size - rows * embed_dim * 4  # float32 rows after a .npy header of at most 64 KiB
        if rows < 0 or not 0 < header <= 65536 + 12 or not re.fullmatch(r"[0-9a-f]{64}", sha256):
            raise ValueError(f"embeddings file {name}: {rows} rows, {size} bytes or its checksum out of range")
        shards.append({"file": name, "rows": rows, "bytes": size, "sha256": sha256})
    return entries, embed_dim, shards, root, model, complete


def _read_shard(directory: Path, shard: dict, embed_dim: int, hint: str, *, mmap: bool = False,
                verify: bool | None = None) -> np.ndarray:  # -> [rows, E]
    """One embeddings file, checked against its manifest record before any of it is trusted: a regular file
    (never a FIFO or a device) of the recorded size, holding a float32 array of the recorded shape (its .npy
    header is parsed here, never allowed to ask for memory the file does not hold), with the recorded
    checksum. ``mmap``: map the rows instead of reading them, and check the checksum only when ``verify``
    is True, or None and the file is at most ``VERIFY_LIMIT`` bytes (read in chunks: hashing 2 GB takes ~4 s);
    read whole, the checksum is checked unless ``verify`` is False."""
    path = directory / shard["file"]
    expected = (shard["rows"], embed_dim)
    try:
        with open_regular_file(path) as f:
            size = os.fstat(f.fileno()).st_size
            if size != shard["bytes"]:  # checked before reading: the record bounds what is read
                raise BrokenIndexError(f"{path}: does not match the checksum in {MANIFEST} ({size} bytes instead "
                                       f"of {shard['bytes']}: changed or half-written); {hint}")
            offset = _npy_header(f, path, expected, hint)
            if size - offset != 4 * expected[0] * expected[1]:
                raise BrokenIndexError(f"{path}: holds {size - offset} bytes of rows, the manifest says float32 "
                                       f"{list(expected)}; {hint}")
            f.seek(0)
            if mmap:
                if verify or (verify is None and size <= VERIFY_LIMIT):
                    digest = hashlib.sha256()
                    while chunk := f.read(16 << 20):  # chunks: little memory whatever the index's size
                        digest.update(chunk)
                    _check_digest(digest.hexdigest(), shard, path, hint)
                # The mapping holds its own reference to the file: it stays valid after `f` is closed, and
                # even after a later build deletes the file (POSIX keeps unlinked files alive while mapped).
                return np.memmap(f, dtype="<f4", mode="r", offset=offset, shape=expected)
            data = f.read(shard["bytes"] + 1)
    except FileNotFoundError as e:
        raise _Vanished(path) from e
    except OSError as e:
        raise BrokenIndexError(f"{directory}: the manifest refers to {path.name}, which cannot be read "
                               f"({e.strerror or e}); {hint}") from e
    if len(data) != shard["bytes"]:
        raise BrokenIndexError(f"{path}: does not match the checksum in {MANIFEST} (changed or half-written); {hint}")
    if verify is not False:
        _check_digest(hashlib.sha256(data).hexdigest(), shard, path, hint)
    return np.frombuffer(data, dtype="<f4", offset=offset).reshape(expected)


def _npy_header(f, path: Path, expected: tuple[int, int], hint: str) -> int:
    """Parse a .npy header (at most 64 KiB, as the manifest check allows) and return where the rows start."""
    buffer = io.BytesIO(f.read(65536 + 12))
    try:
        version = np.lib.format.read_magic(buffer)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran_order, dtype = read_header(buffer)
    except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError, EOFError) as e:
        raise BrokenIndexError(f"{path}: not a valid .npy file ({e}); {hint}") from e
    if dtype != np.dtype("<f4") or fortran_order or shape != expected:
        raise BrokenIndexError(f"{path}: holds {dtype} {list(shape)}, the manifest says float32 {list(expected)}; "
                               f"{hint}")
    return buffer.tell()


def _check_digest(digest: str, shard: dict, path: Path, hint: str) -> None:
    if digest != shard["sha256"]:
        raise BrokenIndexError(f"{path}: does not match the checksum in {MANIFEST} (changed or half-written); {hint}")


def load_index(directory: str | os.PathLike, *, mmap: bool = False, verify: bool | None = None) -> Index:
    """Read an index, checking everything the manifest promises: raises :class:`BrokenIndexError`
    naming the problem if the directory is missing, half-written, or its files do not match.

    A build running meanwhile is no problem: its manifest is the one switch (replaced atomically, always
    naming complete files), and it deletes the files an older manifest named only after the new manifest is
    in place. So a listed file that has vanished means the manifest was replaced since it was read: the
    new one is read instead (a few times at most), and the index returned is one a manifest described.

    ``mmap=True``: the embeddings are memory-mapped read-only (``np.memmap``, after the checks), not read, when
    the index is one file (a complete index); an interrupted run's checkpoint parts are still read whole.
    Every file's size, .npy header and shape are always checked; its SHA-256 is checked when ``verify`` is
    True, or when it is None (the default) and the file is read whole or is at most ``VERIFY_LIMIT`` bytes.
    A mapped file stays valid even if a later ``miniclip index`` run deletes it (POSIX keeps unlinked
    files alive while mapped); the files are never written in place (their names are their hashes).
    """
    directory = Path(directory)
    hint = f"rebuild it with `miniclip index DIR --out {directory}`"
    if not directory.is_dir():
        raise BrokenIndexError(f"{directory}: no index there (not a folder); build one with "
                               f"`miniclip index DIR --out {directory}`")
    for _ in range(_READ_ATTEMPTS):
        raw = _manifest_bytes(directory)
        if raw is None:
            if _data_files(directory):
                raise BrokenIndexError(f"{directory}: embeddings files but no {MANIFEST}: not a usable index (the "
                                       "manifest was deleted?); delete the folder and build it again with "
                                       "`miniclip index`")
            raise BrokenIndexError(f"{directory}: not a miniclip index (no {MANIFEST})")
        try:
            return _load(directory, raw, hint, mmap, verify)
        except _Vanished as gone:
            if _manifest_bytes(directory) == raw:  # the manifest did not change: the file is really missing
                raise BrokenIndexError(f"{directory}: the manifest refers to {gone.args[0].name}, which cannot be "
                                       f"read (no such file); {hint}") from None
    raise BrokenIndexError(f"{directory}: the index was replaced {_READ_ATTEMPTS} times while being read (a "
                           "`miniclip index` running in a loop?); try again")


def _load(directory: Path, raw: bytes, hint: str, mmap: bool, verify: bool | None) -> Index:
    manifest_path = directory / MANIFEST
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError; RecursionError: deep nesting
        raise BrokenIndexError(f"{manifest_path}: damaged index manifest, not valid JSON ({e}); {hint}") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BrokenIndexError(f"{manifest_path}: not a miniclip index manifest")
    if manifest.get("version") != VERSION:
        raise BrokenIndexError(f"{manifest_path}: index format version {manifest.get('version')!r}, this "
                               f"miniclip reads version {VERSION}; {hint}")
    try:
        entries, embed_dim, shards, root, model, complete = _parse_manifest(manifest)
    except ValueError as e:
        raise BrokenIndexError(f"{manifest_path}: damaged index manifest ({e}); {hint}") from e
    if len(entries) != manifest["count"] or sum(s["rows"] for s in shards) != len(entries):
        raise BrokenIndexError(f"{manifest_path}: says {manifest['count']} images, lists {len(entries)} files and "
                               f"{sum(s['rows'] for s in shards)} embedding rows; {hint}")
    parts = [_read_shard(directory, shard, embed_dim, hint, mmap=mmap and len(shards) == 1, verify=verify)
             for shard in shards]
    embeddings = (parts[0] if len(parts) == 1 else np.concatenate(parts) if parts
                  else np.zeros((0, embed_dim), np.float32))
    return Index(directory, root, entries, embeddings, model, complete, manifest)


def _write_manifest(directory: Path, *, root: Path, model: str, embed_dim: int, entries: Sequence[Entry],
                    shards: list[dict], complete: bool, skipped: Sequence[tuple[str, str]], weights: str | None,
                    pending: Iterable[str] = ()) -> dict:
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "complete": complete,
        "root": str(root),
        "model": model,
        "weights": weights,  # for information only: the fingerprint is what is checked
        "embed_dim": embed_dim,
        "count": len(entries),
        "embeddings": shards,
        "files": [{"path": e.path, "size": e.size, "mtime_ns": e.mtime_ns} for e in entries],
        "skipped": [{"path": p, "reason": r} for p, r in skipped],
        # Data files a build wrote (or is about to write) that `embeddings` does not use: the next build to
        # finish deletes them. A build deletes only files a manifest of the folder named here or in `embeddings`.
        "pending": sorted(set(pending) - {s["file"] for s in shards}),
    }
    atomic_write_bytes(directory / MANIFEST, _json_bytes(manifest))
    return manifest


# --------------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------------


def _check_out_folder(out: Path) -> None:
    """Refuse an --out that is a file, or a folder holding anything but a miniclip index. A folder is an index
    only if its manifest.json is a miniclip manifest (its format key), never because of its files' names."""
    if not out.exists():
        return
    if not out.is_dir():
        raise MiniclipError(f"{out}: exists and is not a folder; choose another --out")
    try:
        raw = _manifest_bytes(out)
    except BrokenIndexError:
        raw = b""  # a FIFO, folder or device named manifest.json: not ours
    if raw is not None and _is_our_manifest(raw):
        return
    if raw is not None:
        raise MiniclipError(f"{out}: holds a {MANIFEST} that is not a miniclip index's; refusing to write into it "
                            "(choose an empty or new --out folder)")
    # Empty but for a lock file or a first manifest's temporary file: what a build killed at once leaves.
    if any(p.name != LOCK_FILE and temporary_target(p.name) != MANIFEST for p in out.iterdir()):
        raise MiniclipError(f"{out}: an existing folder that is not a miniclip index; refusing to write into it "
                            "(choose an empty or new --out folder)")


def _existing_index(out: Path, report: BuildReport) -> tuple[Index | None, set[str]]:
    """The index at ``out`` if it is intact (else None, with a note saying why), and the data files its
    manifest names even if it is damaged. (`build_index` has checked the folder with _check_out_folder.)"""
    raw = _manifest_bytes(out)
    if raw is None:
        return None, set()
    try:
        return load_index(out), _listed_files(raw)
    except BrokenIndexError as e:
        report.notes.append(f"the existing index could not be used and is rebuilt from scratch: {e}")
        return None, _listed_files(raw)


def _remove(out: Path, doomed: set[str], keep: set[str]) -> set[str]:
    """Delete the data files ``doomed`` (named by a manifest of this folder) and temporary files of ours left
    by a killed writer; returns the names that could not be deleted."""
    failed = set()
    for name in sorted(doomed):
        try:
            (out / name).unlink(missing_ok=True)
        except OSError:
            failed.add(name)
    for path in out.iterdir():
        if temporary_target(path.name) in doomed | keep | {MANIFEST}:
            try:
                path.unlink()
            except OSError:
                pass
    return failed


LOCK_FILE = ".miniclip-index.lock"  # held by the one build_index writing a folder


Embedder = Callable[[Path, Sequence[Entry]], Iterable[tuple[list[Entry], np.ndarray, list[tuple[str, str]]]]]


def build_index(model, preprocess, root: str | os.PathLike, out: str | os.PathLike, *, batch_size: int = 16,
                checkpoint_every: int = 32, progress: bool | None = None, weights: str | None = None,
                on_skip: Callable[[str, str], None] | None = None, embed: Embedder | None = None) -> BuildReport:
    """Embed every image under ``root`` into the index directory ``out`` (created, or updated in place).

    Only images not already in ``out`` with the same path, size and mtime, under the same model, are
    embedded. Progress is saved every ``checkpoint_every`` batches, and when an exception (including
    KeyboardInterrupt) stops the run, so a re-run continues instead of starting over. Unreadable images are
    skipped and listed in the report. ``progress``: draw a bar on stderr (None: only on a terminal).
    A second build into the same ``out`` while one runs is refused (it would interleave their files).
    ``out`` must be new, empty or an index (its manifest.json a miniclip manifest): any other folder is
    refused, and a build deletes only files that a manifest of the index named.

    ``embed(root, entries)``, when given, replaces ``iter_image_embeddings`` as the source of embeddings: it
    yields (entries read, [b, E] normalized rows, unreadable (path, reason)) per batch, in any order, and
    ``model`` only gives the fingerprint and width (``miniclip.apps.cluster`` embeds on a Dask cluster).
    """
    if checkpoint_every < 1:
        raise MiniclipError(f"--checkpoint-every must be at least 1, got {checkpoint_every}")
    root, out = Path(root).resolve(), Path(out).resolve()
    if not root.is_dir():
        raise MiniclipError(f"{root}: not a folder")
    _check_out_folder(out)  # before the lock file is put into it
    out.mkdir(parents=True, exist_ok=True)
    try:
        with file_lock(out / LOCK_FILE, wait=False):
            _check_out_folder(out)  # again, now that no other build can be changing it
            return _build_index(model, preprocess, root, out, batch_size=batch_size,
                                checkpoint_every=checkpoint_every, progress=progress, weights=weights,
                                on_skip=on_skip, embed=embed)
    except Locked as e:
        raise MiniclipError(f"{out}: another `miniclip index` (process {e.holder or 'unknown'}) is writing this "
                            "index; wait for it to finish, or choose another --out") from None


def _build_index(model, preprocess, root: Path, out: Path, *, batch_size: int, checkpoint_every: int,
                 progress: bool | None, weights: str | None,
                 on_skip: Callable[[str, str], None] | None, embed: Embedder | None) -> BuildReport:
    fingerprint = model_fingerprint(model)
    embed_dim = int(model.config.embed_dim)
    entries, ignored = find_images(root, exclude=[out])
    report = BuildReport(ignored=ignored)
    current, listed = _existing_index(out, report)
    old = current
    if old is not None and old.model != fingerprint:
        report.notes.append("the existing index was built with a different model; every image is re-embedded")
        old = None
    previous = dict(zip(old.entries, old.embeddings, strict=True)) if old is not None else {}

    rows: dict[Entry, np.ndarray] = {e: previous[e] for e in entries if e in previous}
    todo = [e for e in entries if e not in previous]
    report.reused, report.removed = len(rows), len(previous) - len(rows)

    # The manifest is the one thing readers go by, and every change to the folder is announced in it first:
    # `written` holds every data file a manifest of this folder has named (the previous index's, and this
    # run's before each is written), so that a killed run leaves no file that the next one would not know
    # to delete, and no file that a manifest never named is ever deleted.
    written = set(listed)
    state = {"manifest": current.manifest if current is not None else None}

    def publish(entries: Sequence[Entry], shards: list[dict], complete: bool) -> dict:
        state["manifest"] = _write_manifest(out, root=root, model=fingerprint, embed_dim=embed_dim, entries=entries,
                                            shards=shards, complete=complete, skipped=report.skipped,
                                            weights=weights, pending=written)
        return state["manifest"]

    def write_rows(prefix: str, block: np.ndarray) -> dict:  # block: [n, E]
        data, record = _encode_rows(prefix, block)
        if record["file"] not in written:  # named in the manifest (as pending) before it exists
            written.add(record["file"])
            if state["manifest"] is None:  # a new folder: an empty index until the first checkpoint
                publish([], [], complete=False)
            else:  # the index as it is (whichever model built it), plus the name
                state["manifest"] = {**state["manifest"], "pending": sorted(written - {
                    s["file"] for s in state["manifest"]["embeddings"]})}
                atomic_write_bytes(out / MANIFEST, _json_bytes(state["manifest"]))
        atomic_write_bytes(out / record["file"], data)
        return record

    # Checkpoints: the rows kept from the previous index go into one part file at the first checkpoint,
    # then each chunk of new rows into its own part file; the manifest lists them all, in row order.
    shards: list[dict] = []
    saved: list[Entry] = []  # entries whose rows are in `shards`, in order
    unsaved: list[Entry] = list(rows)  # entries with rows in memory but not on disk yet

    def checkpoint() -> None:
        if not unsaved:
            return
        shards.append(write_rows("part", np.stack([rows[e] for e in unsaved])))
        saved.extend(unsaved)
        unsaved.clear()
        publish(saved, shards, complete=False)

    bar = Progress("indexing", len(todo), unit="img", enabled=progress)
    batches = 0
    try:
        batches_in = (embed(root, todo) if embed is not None
                      else iter_image_embeddings(model, preprocess, root, todo, batch_size))
        for ok, features, bad in batches_in:
            for entry, row in zip(ok, features, strict=True):
                rows[entry] = row
                unsaved.append(entry)
            report.embedded += len(ok)
            for path, reason in bad:
                report.skipped.append((path, reason))
                if on_skip is not None:
                    on_skip(path, reason)
            bar.update(len(ok) + len(bad))
            batches += 1
            if batches % checkpoint_every == 0 and report.embedded:
                checkpoint()
    except BaseException:
        bar.finish()
        if report.embedded:  # save what this run computed, then let the interruption go on
            try:
                checkpoint()
            except Exception as save_error:  # never hide the original problem behind this one
                print(f"miniclip: warning: could not save progress: {save_error}", file=sys.stderr)
        raise
    bar.finish()

    final = [e for e in entries if e in rows]  # sorted by path, like a clean build
    if old is not None and old.complete and old.root == root and report.embedded == 0 and report.removed == 0:
        # The rows are exactly the previous index's: keep its files, and only refresh the list of skipped
        # files if that changed (unreadable files are retried on every run, and they may have been fixed), or
        # delete the files a killed build left.
        kept = old.manifest["embeddings"]
        skipped = [{"path": p, "reason": r} for p, r in report.skipped]
        if skipped != old.manifest.get("skipped") or written - {s["file"] for s in kept}:
            publish(old.entries, kept, complete=True)
            _delete_unused(out, written, kept, report, lambda: publish(old.entries, kept, complete=True))
            old.manifest = state["manifest"]
        report.index = old
        return report
    embeddings = np.stack([rows[e] for e in final]) if final else np.zeros((0, embed_dim), np.float32)
    shard = write_rows("embeddings", embeddings)
    publish(final, [shard], complete=True)
    _delete_unused(out, written, [shard], report, lambda: publish(final, [shard], complete=True))
    report.index = Index(out, root, final, embeddings, fingerprint, True, state["manifest"])
    return report


def _delete_unused(out: Path, written: set[str], shards: list[dict], report: BuildReport,
                   republish: Callable[[], object]) -> None:
    """With the complete manifest in place, delete the data files ``written`` that it does not use (until
    then they are in its `pending` list, so a build killed meanwhile leaves nothing unnamed), then rewrite
    the manifest without them. Readers that still go by the previous manifest re-read it (load_index)."""
    keep = {s["file"] for s in shards}
    failed = _remove(out, written - keep, keep)
    if written - keep:
        written.intersection_update(keep | failed)
        republish()
    if failed:
        report.notes.append(f"could not delete {', '.join(sorted(failed))} in {out}; the next run tries again")
    strays = sorted(set(_data_files(out)) - written)
    if strays:
        report.notes.append(f"left in place in {out}, as no manifest of this index named them: {', '.join(strays)}")
