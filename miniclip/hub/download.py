"""Downloading published weights from the Hugging Face hub (or a mirror), with the standard library only.

    miniclip download ViT-B-32                    # a name from `miniclip models`
    miniclip download timm/vit_base_patch32_clip_224.openai       # or any hub repo id
    model, preprocess = miniclip.load("ViT-B-32")  # downloads on first use unless download=False

How one file is fetched (what the hub's own client does, in fewer lines):

1. HEAD `{endpoint}/{repo}/resolve/{revision}/{file}` without following redirects. For a large (LFS) file
   the hub answers 302 to a CDN URL and reports the file's size in `X-Linked-Size` and its SHA-256 in
   `X-Linked-Etag` (quoted). A small file (a config) is served directly; its ETag is a git blob id, not a
   SHA-256, so only its size can be checked. A relative redirect is a renamed repo: asked again there.
2. GET the file URL into `<cache>/<owner>--<name>/<file>.part`, appending from where an earlier attempt
   stopped (HTTP `Range`). The token is sent to the hub only, never to another host (the CDN's URL is
   already signed).
3. Check the size and the SHA-256 (against the registry's when it pins one, and the hub's), then rename
   the `.part` file to its final name (`os.replace`, atomic). A file under its final name is therefore
   always complete and verified; anything interrupted stays a `.part` file that nothing loads; a file that
   fails verification is deleted.

Environment: `HF_ENDPOINT` (default https://huggingface.co: mirrors, and the tests' local server),
`HF_TOKEN` (for gated or private repos), `HF_HUB_OFFLINE=1` (never touch the network), `MINICLIP_HOME`
(where files go; see `miniclip.store.weights_dir`).
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import importlib.metadata
import json
import os
import re
import shutil
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import IO

from ..errors import DownloadError, WeightsError
from ..store import HOME_ENV, file_lock, weights_dir
from .registry import LAYOUTS, ModelInfo, format_size, lookup

ENDPOINT_ENV = "HF_ENDPOINT"
TOKEN_ENV = "HF_TOKEN"
OFFLINE_ENV = "HF_HUB_OFFLINE"
DEFAULT_ENDPOINT = "https://huggingface.co"
DEFAULT_TIMEOUT = 30.0  # seconds without a byte from the server before an attempt is abandoned
DEFAULT_RETRIES = 3  # further attempts after an interrupted transfer, each resuming where the last stopped
CHUNK_BYTES = 1 << 20
MAX_REDIRECTS = 10
_REDIRECTS = (301, 302, 303, 307, 308)
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
_FILE_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".json", ".npz")  # paths, never repo ids
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


# ---------------------------------------------------------------------------------------------------
# Where files go


def repo_dir(repo: str, cache: Path | None = None) -> Path:
    """`<cache>/<owner>--<name>`: one folder per hub repo ("/" cannot be in a folder name; the hub's own
    cache uses "--" the same way)."""
    return (cache or weights_dir()) / repo.replace("/", "--")


def is_repo_id(name: str) -> bool:
    """"owner/name" as the hub spells repo ids, and not a relative path to a weights file."""
    return bool(_REPO_ID.match(name)) and not name.endswith(_FILE_SUFFIXES) and ".." not in name


def model_dir(info: ModelInfo, cache: Path | None = None) -> Path:
    """Where a registry model's files are: its folder inside the package if it ships with miniclip, else its
    hub repo's folder in the cache."""
    return info.package_dir if info.package_dir is not None else repo_dir(info.repo, cache)


def is_downloaded(info: ModelInfo, cache: Path | None = None) -> bool:
    directory = model_dir(info, cache)
    return all((directory / f).is_file() for f in info.files)


def hub_endpoint() -> str:
    return (os.environ.get(ENDPOINT_ENV) or DEFAULT_ENDPOINT).rstrip("/")


def resolve_url(endpoint: str, repo: str, revision: str, filename: str) -> str:
    quote = urllib.parse.quote
    return f"{endpoint}/{quote(repo)}/resolve/{quote(revision, safe='')}/{quote(filename)}"


# ---------------------------------------------------------------------------------------------------
# HTTP, with redirects under our control


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None  # urllib then raises HTTPError for the 3xx, whose headers we read ourselves


_OPENER = urllib.request.build_opener(_NoRedirect)  # keeps urllib's proxy handling ($https_proxy)


class _NotFound(DownloadError):
    """404 for a file (not for a whole repo): lets repo-id downloads try the other layout's file."""


class _Transient(DownloadError):
    """An attempt that may succeed if repeated: connection lost mid-file, timeout, 5xx, 429. download_file
    retries these; anywhere else they are an ordinary DownloadError."""


def _version() -> str:
    try:
        return importlib.metadata.version("miniclip")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def _headers(token: str | None) -> dict[str, str]:
    # identity: a compressed body would make Content-Length and byte ranges refer to other bytes
    headers = {"User-Agent": f"miniclip/{_version()}", "Accept-Encoding": "identity"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return headers


def _token(token: str | None) -> str | None:
    return token if token is not None else os.environ.get(TOKEN_ENV) or None


def _origin(url: str) -> tuple[str, str]:
    parts = urllib.parse.urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


def _request(url: str, method: str, headers: Mapping[str, str], timeout: float):
    """One request, no redirects followed. Returns the response (HTTPError is one too, for 3xx/4xx/5xx)."""
    try:
        return _OPENER.open(urllib.request.Request(url, method=method, headers=dict(headers)), timeout=timeout)
    except urllib.error.HTTPError as e:
        return e
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        reason = getattr(e, "reason", e)
        raise DownloadError(
            f"cannot reach {_origin(url)[1] or url} ({reason}). Are you offline, or is ${ENDPOINT_ENV} wrong? "
            f"Without a network, download on another machine (`miniclip download NAME`) and copy the folder "
            f"into {weights_dir()} (or point ${HOME_ENV} at it)") from e


def _status_error(status: int, headers: Message, repo: str, filename: str, url: str,
                  token: str | None) -> Exception:
    """The exception for an HTTP error status, naming the likely cause."""
    code, detail = headers.get("X-Error-Code", ""), headers.get("X-Error-Message", "")
    said = f" ({detail})" if detail else ""
    if status == 429 or status >= 500:
        return _Transient(f"the server answered HTTP {status}{said} for {url}")
    if status in (401, 403):
        if code == "GatedRepo" or "gated" in detail.lower():
            why = f"{repo} is gated: accept its conditions at {hub_endpoint()}/{repo} while logged in, and"
        else:
            why = f"{repo} is private or gated, or does not exist (the hub answers 401 for unknown repos too):"
        fix = (f"the token in ${TOKEN_ENV} was refused or has no access to it" if token else
               f"set ${TOKEN_ENV} to a hub access token (https://huggingface.co/settings/tokens)")
        return DownloadError(f"access denied to {filename} of {repo} (HTTP {status}{said}): {why} {fix}")
    if status == 404:
        hint = ("check the name: `miniclip models` lists the known models, and a hub repo id must hold "
                "open_clip_model.safetensors or model.safetensors")
        if code in ("RepoNotFound", "RevisionNotFound"):
            return DownloadError(f"no repository {repo} (or no such revision) on the hub (HTTP 404{said}, "
                                 f"{url}); {hint}")
        what = f"{repo} has no file {filename}" if code == "EntryNotFound" else f"{filename} of {repo} not found"
        return _NotFound(f"{what} (HTTP 404{said}, {url}); {hint}")
    return DownloadError(f"unexpected answer HTTP {status}{said} for {url}")


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _sha256_etag(value: str | None) -> str | None:
    """The SHA-256 in an LFS ETag ("<64 hex>", maybe weak W/"..."); None for git blob ids and others."""
    if not value:
        return None
    value = value.strip().removeprefix("W/").strip('"').lower()
    return value if _HEX64.match(value) else None


@dataclass(frozen=True)
class RemoteFile:
    """Where a file's bytes are and what the hub says about them."""

    repo: str
    filename: str
    url: str  # where to GET the bytes (the CDN for LFS files, the resolve URL for small ones)
    size: int | None
    sha256: str | None  # from X-Linked-Etag / ETag, when it is a SHA-256 (LFS files)
    same_origin: bool  # the token may be sent to `url`


def locate(repo: str, filename: str, *, revision: str = "main", endpoint: str | None = None,
           token: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> RemoteFile:
    """HEAD the resolve URL, as the hub's client does, without following the redirect to the CDN (whose
    signed URLs answer GET only): the hub's own answer carries the size and SHA-256."""
    endpoint = (endpoint or hub_endpoint()).rstrip("/")
    token = _token(token)
    url = resolve_url(endpoint, repo, revision, filename)
    for _ in range(MAX_REDIRECTS):
        response = _request(url, "HEAD", _headers(token), timeout)
        with response:
            status, headers = response.status, response.headers
        sha256 = _sha256_etag(headers.get("X-Linked-Etag") or headers.get("ETag"))
        if status in _REDIRECTS and headers.get("Location"):
            location = urllib.parse.urljoin(url, headers["Location"])
            if not urllib.parse.urlsplit(headers["Location"]).netloc:
                url = location  # relative: the hub itself, e.g. a renamed repo; its answer is the one to read
                continue
            return RemoteFile(repo, filename, location, _int(headers.get("X-Linked-Size")), sha256,
                              _origin(location) == _origin(endpoint))
        if 200 <= status < 300:
            size = _int(headers.get("X-Linked-Size") or headers.get("Content-Length"))
            return RemoteFile(repo, filename, url, size, sha256, True)
        raise _status_error(status, headers, repo, filename, url, token)
    raise DownloadError(f"more than {MAX_REDIRECTS} redirects from {url}")


def _get(url: str, headers: dict[str, str], timeout: float):
    """GET, following redirects ourselves so that Authorization never goes to another origin."""
    for _ in range(MAX_REDIRECTS):
        response = _request(url, "GET", headers, timeout)
        location = response.headers.get("Location")
        if response.status not in _REDIRECTS or not location:
            return response
        response.close()
        new_url = urllib.parse.urljoin(url, location)
        if _origin(new_url) != _origin(url):
            headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
        url = new_url
    raise DownloadError(f"more than {MAX_REDIRECTS} redirects from {url}")


# ---------------------------------------------------------------------------------------------------
# Progress


class Progress:
    """`name  [#####.....]  45%  271 MB / 605 MB  35 MB/s  ETA 0:09` on one line, redrawn at most ten times
    a second; nothing at all when disabled (not a terminal, or --quiet)."""

    def __init__(self, label: str, enabled: bool, stream: IO[str], clock=time.monotonic):
        self.label, self.enabled, self.stream, self.clock = label, enabled, stream, clock
        self.done = self.first = 0
        self.total: int | None = None
        self.t0 = self.last = 0.0
        self.width = 0

    def start(self, done: int, total: int | None) -> None:
        self.done = self.first = done
        self.total = total
        self.t0 = self.last = self.clock()
        self._draw()

    def update(self, n: int) -> None:
        self.done += n
        if self.clock() - self.last >= 0.1:
            self._draw()

    def finish(self, note: str) -> None:
        if self.enabled:
            self._draw(note)
            self.stream.write("\n")
            self.stream.flush()

    def _draw(self, note: str = "") -> None:
        if not self.enabled:
            return
        self.last = now = self.clock()
        rate = (self.done - self.first) / max(now - self.t0, 1e-6)
        parts = [self.label]
        if self.total:
            frac = min(self.done / self.total, 1.0)
            parts += ["[" + "#" * round(20 * frac) + "." * (20 - round(20 * frac)) + "]", f"{100 * frac:3.0f}%",
                      f"{format_size(self.done)} / {format_size(self.total)}"]
        else:
            parts.append(format_size(self.done))
        if now - self.t0 > 0 and self.done > self.first:
            parts.append(f"{format_size(rate)}/s")
            if self.total and rate > 0 and not note:
                eta = round((self.total - self.done) / rate)
                parts.append(f"ETA {eta // 60}:{eta % 60:02d}")
        if note:
            parts.append(note)
        line = "  ".join(parts)
        self.stream.write("\r" + line.ljust(self.width))  # pad: a shorter line must cover the last one
        self.stream.flush()
        self.width = len(line)


def _progress_enabled(progress: bool | None, stream: IO[str]) -> bool:
    if progress is not None:
        return progress
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


# ---------------------------------------------------------------------------------------------------
# One file


def _open_for_writing(path: Path, mode: str) -> IO[bytes]:
    return open(path, mode)  # noqa: SIM115  (a seam for the tests' full-disk simulation)


def _disk_full(directory: Path, need: int | None, part: Path) -> DownloadError:
    need_text = f"{format_size(need)} more are needed; " if need else ""
    return DownloadError(f"not enough disk space in {directory}: {need_text}free some space (the partial "
                         f"download {part.name} is kept and will resume), or set ${HOME_ENV} to another disk")


def _check_space(directory: Path, need: int | None, part: Path) -> None:
    if need is None:
        return
    try:
        free = shutil.disk_usage(directory).free
    except OSError:
        return
    if need > free:
        raise _disk_full(directory, need, part)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _fetch(remote: RemoteFile, part: Path, token: str | None, timeout: float, progress: Progress) -> None:
    """Bring `part` up to the whole file, resuming from its current length. Raises _Transient when the
    transfer stops early (what is already in `part` stays for the next attempt)."""
    offset = part.stat().st_size if part.exists() else 0
    if remote.size is not None and offset > remote.size:  # left over from another version of the file
        part.unlink()
        offset = 0
    if remote.size is not None and offset == remote.size:
        progress.start(offset, remote.size)
        return
    _check_space(part.parent, None if remote.size is None else remote.size - offset, part)
    headers = _headers(token if remote.same_origin else None)
    if offset:
        headers["Range"] = f"bytes={offset}-"
    response = _get(remote.url, headers, timeout)
    with response:
        status = response.status
        if status == 416 and offset:  # the server will not resume from there: start over
            part.unlink()
            raise _Transient(f"the server refused to resume at byte {offset}")
        if status == 403 and not remote.same_origin:  # a CDN's signed link that expired: locate afresh
            raise _Transient(f"the file server refused the download link (HTTP 403, {remote.url})")
        if status not in (200, 206):
            raise _status_error(status, response.headers, remote.repo, remote.filename, remote.url, token)
        if status == 206:
            match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
            if not match or int(match.group(1)) != offset:
                part.unlink()
                raise _Transient(f"asked to resume at byte {offset}, the server sent "
                                 f"{response.headers.get('Content-Range')!r}; starting over")
            mode = "ab"
        else:
            offset, mode = 0, "wb"  # a 200 is the whole file (the server ignored or was not asked a range)
        length = _int(response.headers.get("Content-Length"))
        total = remote.size if remote.size is not None else (None if length is None else offset + length)
        progress.start(offset, total)
        received = 0
        try:
            with _open_for_writing(part, mode) as f:
                while True:
                    try:
                        # read1: whatever has arrived (up to a chunk), so bytes received before a stall are kept
                        chunk = response.read1(CHUNK_BYTES)
                    except (OSError, http.client.HTTPException) as e:  # reset, timeout, IncompleteRead
                        why = str(e) or type(e).__name__
                        raise _Transient(f"connection lost after {offset + received} bytes ({why})") from e
                    if not chunk:
                        break
                    f.write(chunk)
                    received += len(chunk)
                    progress.update(len(chunk))
        except OSError as e:  # from write() or from the flush on close
            if e.errno == errno.ENOSPC:
                need = None if total is None else total - offset - received
                raise _disk_full(part.parent, need, part) from e
            raise
    # http.client returns a short body without complaint when the connection closes early: count the bytes.
    if length is not None and received < length:
        raise _Transient(f"connection closed after {offset + received} of {offset + length} bytes")


def download_file(repo: str, filename: str, directory: str | os.PathLike, *, sha256: str | None = None,
                  revision: str = "main", endpoint: str | None = None, token: str | None = None,
                  progress: bool | None = None, timeout: float = DEFAULT_TIMEOUT, retries: int = DEFAULT_RETRIES,
                  retry_wait: float = 1.0, stream: IO[str] | None = None) -> Path:
    """Download one file of a hub repo into `directory` unless it is already there; returns its path.

    `sha256`: the expected digest when known (the registry's); the hub's own SHA-256 is checked as well.
    `retries`: further attempts after an interrupted transfer, each resuming with a Range request.
    `progress`: True/False, or None for "when stderr is a terminal"."""
    directory = Path(directory)
    dest = directory / filename
    if dest.is_file():
        return dest  # only ever created by the os.replace below, after verification
    stream = stream or sys.stderr
    directory.mkdir(parents=True, exist_ok=True)

    def waiting(holder: str) -> None:
        print(f"miniclip: waiting for another process ({holder or 'unknown'}) downloading {filename} of {repo}",
              file=stream, flush=True)

    # One download of a file at a time: two processes appending to the same .part would corrupt it.
    with file_lock(dest.with_name(dest.name + ".lock"), wait=True, on_wait=waiting):
        if dest.is_file():
            return dest  # the process we waited for finished it
        return _download_locked(repo, filename, dest, sha256=sha256, revision=revision, endpoint=endpoint,
                                token=_token(token), progress=progress, timeout=timeout, retries=retries,
                                retry_wait=retry_wait, stream=stream)


def _download_locked(repo: str, filename: str, dest: Path, *, sha256: str | None, revision: str,
                     endpoint: str | None, token: str | None, progress: bool | None, timeout: float, retries: int,
                     retry_wait: float, stream: IO[str]) -> Path:
    part = dest.with_name(dest.name + ".part")
    bar = Progress(f"{repo}/{filename}", _progress_enabled(progress, stream), stream)
    retries = max(0, retries)
    for attempt in range(retries + 1):
        try:
            # located afresh on every attempt: CDN links are signed for a limited time
            remote = locate(repo, filename, revision=revision, endpoint=endpoint, token=token, timeout=timeout)
            if sha256 and remote.sha256 and sha256.lower() != remote.sha256:
                raise DownloadError(
                    f"{filename} of {repo}: the hub's SHA-256 {remote.sha256} differs from the {sha256.lower()} "
                    "pinned in miniclip's registry: the file on the hub has changed. Nothing was downloaded")
            _fetch(remote, part, token, timeout, bar)
            break
        except _Transient as e:
            if attempt == retries:
                bar.finish("interrupted")
                kept = (f"the {format_size(part.stat().st_size)} received are kept in {part} and the next "
                        "attempt resumes from there" if part.exists() else "nothing was kept")
                raise DownloadError(f"download of {filename} from {repo} interrupted after {attempt + 1} "
                                    f"attempt(s): {e}; {kept}") from e
            bar.finish(f"interrupted ({e}): resuming")
            time.sleep(retry_wait * (attempt + 1))
    bar.finish("verifying" if sha256 or remote.sha256 else "done")
    _verify(part, remote, sha256)
    os.replace(part, dest)  # atomic: the final name appears complete or not at all
    return dest


def _verify(part: Path, remote: RemoteFile, pinned: str | None) -> None:
    """Size and SHA-256 of a finished `.part` file; on any mismatch it is deleted, so it can't be loaded."""
    size = part.stat().st_size
    if remote.size is not None and size != remote.size:
        part.unlink()
        raise DownloadError(f"{remote.filename} of {remote.repo}: got {size} bytes, the hub says {remote.size}; "
                            "the download was deleted, run again to retry")
    expected = [(d.lower(), src) for d, src in ((pinned, "miniclip's registry"), (remote.sha256, "the hub"))
                if d]
    if not expected:
        return  # a small non-LFS file: the hub gives no SHA-256 for it, only its size
    digest = sha256_file(part)
    for want, source in expected:
        if digest != want:
            part.unlink()
            raise DownloadError(
                f"checksum mismatch for {remote.filename} of {remote.repo}: SHA-256 {digest}, expected {want} "
                f"(from {source}). The download was corrupted (or altered on the way) and has been deleted; "
                "run again to retry")


# ---------------------------------------------------------------------------------------------------
# Models and repos


def _config_activation(config_file: Path, layout: str) -> str | None:
    """The activation a config file gives, read as miniclip.weights reads it; None if unreadable."""
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None  # load_weights reports a broken config file with its own message
    if not isinstance(config, dict):
        return None
    if layout == "open_clip":
        model = config.get("model_cfg", config)
        return "quick_gelu" if isinstance(model, dict) and model.get("quick_gelu", False) else "gelu"
    vision = config.get("vision_config") or {}
    return (vision.get("hidden_act") if isinstance(vision, dict) else None) or "quick_gelu"


def _check_activation(info: ModelInfo, directory: Path) -> None:
    """The registry knows what each published model was trained with; a config file that says otherwise
    would give wrong outputs without any error, so refuse it."""
    found = _config_activation(directory / info.config_file, info.layout)
    if found is not None and found != info.activation:
        fix = ('add "quick_gelu": true to its "model_cfg"' if info.layout == "open_clip" and
               info.activation == "quick_gelu" else f"set its activation to {info.activation!r}")
        raise WeightsError(f"{directory / info.config_file} gives activation {found!r}, but {info.name} was "
                           f"trained with {info.activation!r} (miniclip's registry); loading it would give wrong "
                           f"outputs. If the file is right, the registry is wrong: please report it. Otherwise {fix}")


def local_weights(name: str, cache: Path | None = None) -> Path | None:
    """The weights file of a registry model or hub repo if it is fully on disk, else None."""
    info = lookup(name)
    if info is not None:
        return model_dir(info, cache) / info.weights_file if is_downloaded(info, cache) else None
    directory = repo_dir(name, cache)
    for weights_file, _ in LAYOUTS.values():
        if (directory / weights_file).is_file():
            return directory / weights_file
    return None


def download(name: str, *, progress: bool | None = None, timeout: float = DEFAULT_TIMEOUT,
             retries: int = DEFAULT_RETRIES, retry_wait: float = 1.0, cache: Path | None = None,
             stream: IO[str] | None = None) -> Path:
    """Download a model from `miniclip models`, or a hub repo id's weights + config, unless already on disk.
    Returns the weights file, which `miniclip.load` accepts. See `download_file` for the arguments."""
    kwargs = dict(progress=progress, timeout=timeout, retries=retries, retry_wait=retry_wait, stream=stream)
    info = lookup(name)
    if info is not None and info.packaged is not None:
        if not is_downloaded(info):
            raise DownloadError(not_downloaded_message(name, info))
        return model_dir(info) / info.weights_file
    if info is not None:
        directory = repo_dir(info.repo, cache)
        for file in info.files:  # config first: a present weights file then means both are there
            download_file(info.repo, file, directory, sha256=info.sha256.get(file), revision=info.revision,
                          **kwargs)
        _check_activation(info, directory)
        return directory / info.weights_file
    if not is_repo_id(name):
        raise DownloadError(f"{name!r} is neither a model name (see `miniclip models`) nor a hub repo id "
                            "(owner/name)")
    found = local_weights(name, cache)
    if found is not None:
        return found
    directory = repo_dir(name, cache)
    for weights_file, config_file in LAYOUTS.values():  # open_clip first: OpenAI's own tensor names
        try:
            locate(name, weights_file, timeout=timeout)
        except _NotFound:
            continue
        try:
            download_file(name, config_file, directory, **kwargs)
        except _NotFound:
            warnings.warn(f"{name} has no {config_file}: without it the activation must be given when loading "
                          "(activation='quick_gelu' for OpenAI weights, 'gelu' for LAION's)", stacklevel=2)
        return download_file(name, weights_file, directory, **kwargs)
    raise DownloadError(f"{name} has neither open_clip_model.safetensors nor model.safetensors: miniclip reads "
                        "CLIP checkpoints in safetensors only, in the open_clip or transformers layout")


def _offline() -> bool:
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def not_downloaded_message(name: str, info: ModelInfo | None, cache: Path | None = None) -> str:
    if info is not None and info.package_dir is not None:
        return (f"{name} ships with miniclip, but {' + '.join(info.files[::-1])} are missing from "
                f"{info.package_dir}: reinstall miniclip")
    repo = info.repo if info else name
    files = " + ".join(info.files[::-1]) if info else "open_clip_model.safetensors + open_clip_config.json (or " \
        "model.safetensors + config.json)"
    return (f"{name} is not downloaded and downloading is off (download=False or ${OFFLINE_ENV}=1): put {files} "
            f"from {hub_endpoint()}/{repo} into {repo_dir(repo, cache)}, e.g. by running `miniclip download {name}` "
            f"on a machine with a network and copying that folder, or set ${HOME_ENV} to where the files are")


def resolve_source(source, *, allow_download: bool = True, progress: bool | None = None):
    """What `miniclip.load` should read for `source`. A path that exists is returned as is (local files
    always win), and so is any Path object; a string naming a registry model or alias, or a hub repo id,
    becomes the path of its weights file, downloaded first if need be unless `allow_download` is False or
    $HF_HUB_OFFLINE is set; anything else is returned as is, for the loader to report."""
    if not isinstance(source, str) or Path(source).expanduser().exists():
        return source
    name = os.fspath(source)
    info = lookup(name)
    if info is None and not is_repo_id(name):
        return source
    found = local_weights(name)
    if found is None and (not allow_download or _offline()):
        raise DownloadError(not_downloaded_message(name, info))
    if found is not None:
        if info is not None:
            _check_activation(info, found.parent)
        return found
    try:
        return download(name, progress=progress)
    except DownloadError as e:
        if info is None:  # it may have been meant as a path
            raise DownloadError(f"{name}: no such file or directory; as a hub repo id: {e}") from e
        raise
