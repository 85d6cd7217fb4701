"""Downloading published weights from the Hugging Face hub (or a mirror), with the standard library only.

    miniclip download ViT-B-32                    # a name from `miniclip models`
    miniclip download timm/vit_base_patch32_clip_224.openai       # or any hub repo id
    model, preprocess = miniclip.load("ViT-B-32")  # downloads on first use unless download=False

How one file is fetched (what the hub's own client does, in fewer lines):

1. HEAD `{endpoint}/{repo}/resolve/{revision}/{file}` without following redirects (the revision, e.g. a
   pull request's `refs/pr/15`, quoted whole: `refs%2Fpr%2F15`). For a large (LFS) file the hub answers 302
   to a CDN URL and reports the file's size in `X-Linked-Size` and its SHA-256 in `X-Linked-Etag` (quoted).
   A small file (a config) is served directly; its ETag is a git blob id, not a SHA-256, so only its size
   can be checked. A relative redirect is a renamed repo: asked again there. Every answer of the hub
   carries the commit it resolved the revision to in `X-Repo-Commit`: an answer without it comes from
   something else (a proxy, a captive portal, a wrong $HF_ENDPOINT) and is refused, as the hub's client does.
2. GET the file URL into `<cache>/<owner>--<name>/<file>.part`, appending from where an earlier attempt
   stopped (HTTP `Range`). The token is sent to the hub only, never to another host (the CDN's URL is
   already signed). Only http(s) URLs are ever opened (a redirect to `file:`, `ftp:` or `data:` is refused),
   no more bytes are taken than the size announced, and each file has an overall deadline besides the
   timeout on each read.
3. Check the size and the SHA-256 (against the registry's when it pins one, and the hub's), then rename
   the `.part` file to its final name (`os.replace`, atomic). A file under its final name is therefore
   always complete and verified; anything interrupted stays a `.part` file that nothing loads; a file that
   fails verification is deleted.

Environment, read as the hub's own client (huggingface_hub) reads it: `HF_ENDPOINT` (default
https://huggingface.co: mirrors, and the tests' local server); the token for gated or private repos from
`HF_TOKEN`, else `HUGGING_FACE_HUB_TOKEN`, else the token file (`$HF_TOKEN_PATH`, else `$HF_HOME/token`,
else `~/.cache/huggingface/token`, as `huggingface-cli login` writes it), newlines and surrounding spaces
removed; `HF_HUB_OFFLINE=1` (never touch the network; `TRANSFORMERS_OFFLINE=1` too). `MINICLIP_HOME`: where
files go (see `miniclip.store.weights_dir`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import http.client
import importlib.metadata
import json
import math
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
from ..terminal import Progress, format_size
from ..weights import LAYOUT_FILES, WEIGHTS_FILES, stated_activation
from .registry import ModelInfo, lookup, other_layout

ENDPOINT_ENV = "HF_ENDPOINT"
TOKEN_ENV = "HF_TOKEN"
TOKEN_ENVS = (TOKEN_ENV, "HUGGING_FACE_HUB_TOKEN")  # the second: the older name, still read by the hub's client
TOKEN_PATH_ENV = "HF_TOKEN_PATH"
OFFLINE_ENV = "HF_HUB_OFFLINE"
OFFLINE_ENVS = (OFFLINE_ENV, "TRANSFORMERS_OFFLINE")
TRY_OFFLINE = ("To try miniclip without downloading: `miniclip random-weights ViT-B-32 DIR` writes random weights "
               "(meaningless outputs) that every command runs on")
DEFAULT_ENDPOINT = "https://huggingface.co"
DEFAULT_TIMEOUT = 30.0  # seconds without a byte from the server before an attempt is abandoned
DEFAULT_RETRIES = 3  # further attempts after an interrupted transfer, each resuming where the last stopped
# Seconds for one file, all attempts together: a server trickling a byte now and then never trips the
# per-read timeout. Generous (1.71 GB at 160 kB/s); what arrived is kept and the next run resumes from it.
DEFAULT_DEADLINE = 3 * 3600.0
_SCHEMES = ("http", "https")
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
    endpoint = (os.environ.get(ENDPOINT_ENV) or DEFAULT_ENDPOINT).rstrip("/")
    if urllib.parse.urlsplit(endpoint).scheme.lower() not in _SCHEMES:
        raise DownloadError(f"${ENDPOINT_ENV}={endpoint!r}: the hub is reached over http(s) only")
    return endpoint


def resolve_url(endpoint: str, repo: str, revision: str, filename: str) -> str:
    quote = urllib.parse.quote
    return f"{endpoint}/{quote(repo)}/resolve/{quote(revision, safe='')}/{quote(filename)}"


# ---------------------------------------------------------------------------------------------------
# HTTP, with redirects under our control


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None  # urllib then raises HTTPError for the 3xx, whose headers we read ourselves


def _build_opener() -> urllib.request.OpenerDirector:
    """http(s) only: urllib's build_opener would add handlers for file:, ftp: and data: URLs, which a
    hostile server's redirect could point at (a local file, a FIFO that blocks). Proxies ($https_proxy) are
    kept; any other scheme gets urllib's "unknown url type" error."""
    opener = urllib.request.OpenerDirector()
    handlers = [urllib.request.ProxyHandler(), urllib.request.UnknownHandler(), urllib.request.HTTPHandler(),
                urllib.request.HTTPDefaultErrorHandler(), _NoRedirect(), urllib.request.HTTPErrorProcessor()]
    if hasattr(urllib.request, "HTTPSHandler"):  # absent when Python was built without ssl
        handlers.append(urllib.request.HTTPSHandler())
    for handler in handlers:
        opener.add_handler(handler)
    return opener


_OPENER = _build_opener()


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


def token_file() -> Path:
    """Where `huggingface-cli login` keeps the token: $HF_TOKEN_PATH, else $HF_HOME/token, else
    $XDG_CACHE_HOME/huggingface/token or ~/.cache/huggingface/token (huggingface_hub's constants)."""
    def expand(path: str) -> Path:
        return Path(os.path.expandvars(os.path.expanduser(path)))

    if os.environ.get(TOKEN_PATH_ENV):
        return expand(os.environ[TOKEN_PATH_ENV])
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return expand(home) / "token"


def _find_token() -> tuple[str | None, str]:
    """(raw token, where it came from): the environment first, then the token file."""
    for var in TOKEN_ENVS:
        if os.environ.get(var):
            return os.environ[var], f"${var}"
    path = token_file()
    try:
        return path.read_text(encoding="utf-8"), str(path)
    except FileNotFoundError:
        return None, f"${TOKEN_ENV}"
    except (OSError, UnicodeDecodeError) as e:
        raise DownloadError(f"cannot read the hub token file {path}: {e}") from e


def _clean_token(value: str | None, origin: str) -> str | None:
    """As the hub's client: line breaks and surrounding spaces removed, empty means none (a token file or
    `echo $TOKEN > file` leaves a trailing newline, which http.client would refuse in a header)."""
    if value is None:
        return None
    value = value.replace("\r", "").replace("\n", "").strip()
    if any(not 0x21 <= ord(c) <= 0x7E for c in value):
        raise DownloadError(f"the hub token in {origin} holds spaces, control or non-ASCII characters, which no "
                            "token has: check it (https://huggingface.co/settings/tokens)")
    return value or None


def _token(token: str | None) -> str | None:
    if token is not None:
        return _clean_token(token, "the token given")
    return _clean_token(*_find_token())


def _token_origin() -> str:
    """Where the token came from, for messages."""
    for var in TOKEN_ENVS:
        if os.environ.get(var):
            return f"${var}"
    return str(token_file())


def _origin(url: str) -> tuple[str, str]:
    parts = urllib.parse.urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


def _check_scheme(url: str, came_from: str) -> None:
    if _origin(url)[0] not in _SCHEMES:
        raise DownloadError(f"{came_from} redirected to {url[:200]!r}: only http(s) URLs are followed; "
                            "refused (a misconfigured or hostile server)")


def _request(url: str, method: str, headers: Mapping[str, str], timeout: float):
    """One request, no redirects followed. Returns the response (HTTPError is one too, for 3xx/4xx/5xx)."""
    if _origin(url)[0] not in _SCHEMES:
        raise DownloadError(f"refusing to open {url[:200]!r}: only http(s) URLs are fetched")
    try:
        return _OPENER.open(urllib.request.Request(url, method=method, headers=dict(headers)), timeout=timeout)
    except urllib.error.HTTPError as e:
        return e
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        reason = getattr(e, "reason", e)
        raise DownloadError(
            f"cannot reach {_origin(url)[1] or url} ({reason}). Are you offline, or is ${ENDPOINT_ENV} wrong? "
            f"Without a network, download on another machine (`miniclip download NAME`) and copy the folder "
            f"into {weights_dir()} (or point ${HOME_ENV} at it). {TRY_OFFLINE}") from e


def _status_error(status: int, headers: Message, repo: str, filename: str, url: str,
                  token: str | None) -> Exception:
    """The exception for an HTTP error status, naming the likely cause."""
    code, detail = headers.get("X-Error-Code", ""), headers.get("X-Error-Message", "")
    said = f" ({detail})" if detail else ""
    if status == 429 or status >= 500:
        return _Transient(f"the server answered HTTP {status}{said} for {url}")
    hint = ("check the name: `miniclip models` lists the known models, and a hub repo id must hold "
            f"{' or '.join(WEIGHTS_FILES)}")
    fix = (f"the token in {_token_origin()} was refused or has no access to it" if token else
           f"set ${TOKEN_ENV} to a hub access token (https://huggingface.co/settings/tokens)")
    if code == "RepoNotFound":  # the hub answers 401 (no token) or 404 alike for unknown and private repos
        return DownloadError(f"no repository {repo} on the hub, or it is private (HTTP {status}{said}, {url}); "
                             f"{hint}. If it is private: {fix}")
    if status in (401, 403):
        if code == "GatedRepo" or "gated" in detail.lower():
            why = f"{repo} is gated: accept its conditions at {hub_endpoint()}/{repo} while logged in, and"
        else:
            why = f"{repo} is private or gated, or does not exist (the hub answers 401 for unknown repos too):"
        return DownloadError(f"access denied to {filename} of {repo} (HTTP {status}{said}): {why} {fix}")
    if status == 404:
        if code == "RevisionNotFound":
            return _NotFound(f"{repo} has no such revision (HTTP 404{said}, {url}); {hint}")
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
    commit: str  # X-Repo-Commit: the commit the hub resolved the revision to


def locate(repo: str, filename: str, *, revision: str = "main", endpoint: str | None = None,
           token: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> RemoteFile:
    """HEAD the resolve URL, as the hub's client does, without following the redirect to the CDN (whose
    signed URLs answer GET only): the hub's own answer carries the size, SHA-256 and commit."""
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
            _check_scheme(location, _origin(url)[1])
            if not urllib.parse.urlsplit(headers["Location"]).netloc:
                url = location  # relative: the hub itself, e.g. a renamed repo; its answer is the one to read
                continue
            return RemoteFile(repo, filename, location, _int(headers.get("X-Linked-Size")), sha256,
                              _origin(location) == _origin(endpoint), _commit(headers, url))
        if 200 <= status < 300:
            size = _int(headers.get("X-Linked-Size") or headers.get("Content-Length"))
            return RemoteFile(repo, filename, url, size, sha256, True, _commit(headers, url))
        raise _status_error(status, headers, repo, filename, url, token)
    raise DownloadError(f"more than {MAX_REDIRECTS} redirects from {url}")


def _commit(headers: Message, url: str) -> str:
    """X-Repo-Commit, which every answer of the hub (and of mirrors that relay it) carries; huggingface_hub
    refuses an answer without it too. Without it, what answered is not the hub: saving its body would store
    a login page or a proxy's error as the model."""
    commit = headers.get("X-Repo-Commit")
    if not commit:
        raise DownloadError(f"the answer for {url} lacks the hub's X-Repo-Commit header, so it does not come from "
                            "the hub (a proxy, a captive portal or a wrong $HF_ENDPOINT answering in its place); "
                            "nothing was saved. Check $HF_ENDPOINT, the proxy settings, or log in to the network")
    return commit


def _get(url: str, headers: dict[str, str], timeout: float):
    """GET, following redirects ourselves so that Authorization never goes to another origin."""
    for _ in range(MAX_REDIRECTS):
        response = _request(url, "GET", headers, timeout)
        location = response.headers.get("Location")
        if response.status not in _REDIRECTS or not location:
            return response
        response.close()
        new_url = urllib.parse.urljoin(url, location)
        _check_scheme(new_url, _origin(url)[1])
        if _origin(new_url) != _origin(url):
            headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
        url = new_url
    raise DownloadError(f"more than {MAX_REDIRECTS} redirects from {url}")


# ---------------------------------------------------------------------------------------------------
# Progress


# ---------------------------------------------------------------------------------------------------
# One file


def _open_for_writing(path: Path, mode: str) -> IO[bytes]:
    """The .part file, for "wb" or "ab"; a symlink planted at its name is refused (O_NOFOLLOW), not followed.
    Also a seam for the tests' full-disk simulation."""
    flags = os.O_WRONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | (os.O_APPEND if mode == "ab" else os.O_TRUNC)
    return os.fdopen(os.open(path, flags, 0o666), mode)


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


class _Deadline(DownloadError):
    """The file's overall deadline passed (what arrived is kept)."""


def _fetch(remote: RemoteFile, part: Path, token: str | None, timeout: float, progress: Progress,
           stop_at: float) -> None:
    """Bring `part` up to the whole file, resuming from its current length. Raises _Transient when the
    transfer stops early (what is already in `part` stays for the next attempt), _Deadline at `stop_at`
    (time.monotonic()), DownloadError when the server sends more than it announced."""
    if part.is_symlink():  # never written through (and _open_for_writing refuses one planted meanwhile)
        raise DownloadError(f"{part} is a symbolic link, not a partial download: remove it and run again")
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
    # the socket's timeout is set when connecting: never past the deadline
    response = _get(remote.url, headers, max(0.01, min(timeout, stop_at - time.monotonic())))
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
        # Bytes this answer may carry: a server that sends more (an endless body) is cut off at once, not
        # after it has filled the disk. One byte more is asked for, to tell "exactly the size" from "more".
        allowed = None if total is None else total - offset
        if length is not None and allowed is not None and length > allowed:
            part.unlink(missing_ok=True)
            raise DownloadError(f"{remote.filename} of {remote.repo}: the server announces {offset + length} "
                                f"bytes where {total} are expected; nothing was kept, run again to retry")
        progress.start(offset, total)
        received = 0
        try:
            with _open_for_writing(part, mode) as f:
                while True:
                    want = CHUNK_BYTES if allowed is None else min(CHUNK_BYTES, allowed - received + 1)
                    try:
                        # read1: whatever has arrived (up to a chunk), so bytes received before a stall are kept
                        chunk = response.read1(want)
                    except (OSError, http.client.HTTPException) as e:  # reset, timeout, IncompleteRead
                        why = str(e) or type(e).__name__
                        raise _Transient(f"connection lost after {offset + received} bytes ({why})") from e
                    if not chunk:
                        break
                    if allowed is not None and received + len(chunk) > allowed:
                        f.close()
                        part.unlink(missing_ok=True)
                        raise DownloadError(f"{remote.filename} of {remote.repo}: the server sent more than the "
                                            f"{total} bytes announced; stopped there and deleted the download "
                                            "(not the file: a misbehaving server or proxy)")
                    f.write(chunk)
                    received += len(chunk)
                    progress.update(len(chunk))
                    if time.monotonic() > stop_at:
                        raise _Deadline(f"stopped after {offset + received} bytes")
        except OSError as e:  # from write() or from the flush on close
            if e.errno == errno.ENOSPC:
                need = None if total is None else total - offset - received
                raise _disk_full(part.parent, need, part) from e
            raise
    # http.client returns a short body without complaint when the connection closes early: count the bytes.
    if length is not None and received < length:
        raise _Transient(f"connection closed after {offset + received} of {offset + length} bytes")


def download_file(repo: str, filename: str, directory: str | os.PathLike, *, sha256: str | None = None,
                  size: int | None = None, revision: str = "main", endpoint: str | None = None,
                  token: str | None = None, progress: bool | None = None, timeout: float = DEFAULT_TIMEOUT,
                  retries: int = DEFAULT_RETRIES, retry_wait: float = 1.0, deadline: float | None = DEFAULT_DEADLINE,
                  stream: IO[str] | None = None) -> Path:
    """Download one file of a hub repo into `directory` unless it is already there; returns its path.

    `sha256`, `size`: the expected digest and exact size when known (the registry's); the hub's own are
    checked as well, and a hub that reports others is refused before anything is downloaded.
    `retries`: further attempts after an interrupted transfer, each resuming with a Range request.
    `timeout`: seconds without a byte before an attempt is abandoned; `deadline`: seconds for the whole file,
    all attempts together (None: no limit); either way what arrived is kept for the next run to resume.
    `progress`: True/False, or None for "when stderr is a terminal"."""
    directory = Path(directory)
    dest = directory / filename
    if dest.is_file():
        return dest  # only ever created by the os.replace below, after verification
    if _offline():
        raise DownloadError(f"{filename} of {repo} is not downloaded and ${OFFLINE_ENV} is set: nothing is "
                            f"fetched; put the file into {directory}, or unset ${OFFLINE_ENV}")
    stream = stream or sys.stderr
    stop_at = time.monotonic() + (math.inf if deadline is None else deadline)
    created = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)

    def waiting(holder: str) -> None:
        print(f"miniclip: waiting for another process ({holder or 'unknown'}) downloading {filename} of {repo}",
              file=stream, flush=True)

    try:
        # One download of a file at a time: two processes appending to the same .part would corrupt it.
        with file_lock(dest.with_name(dest.name + ".lock"), wait=True, on_wait=waiting):
            if dest.is_file():
                return dest  # the process we waited for finished it
            return _download_locked(repo, filename, dest, sha256=sha256, size=size, revision=revision,
                                    endpoint=endpoint, token=_token(token), progress=progress, timeout=timeout,
                                    retries=retries, retry_wait=retry_wait, stop_at=stop_at, deadline=deadline,
                                    stream=stream)
    except BaseException:
        if created:  # a failure before any byte arrived must not leave an empty folder in the cache
            with contextlib.suppress(OSError):
                directory.rmdir()  # only succeeds if empty (a kept .part file keeps the folder)
        raise


def _download_locked(repo: str, filename: str, dest: Path, *, sha256: str | None, size: int | None, revision: str,
                     endpoint: str | None, token: str | None, progress: bool | None, timeout: float, retries: int,
                     retry_wait: float, stop_at: float, deadline: float | None, stream: IO[str]) -> Path:
    part = dest.with_name(dest.name + ".part")
    bar = Progress(f"{repo}/{filename}", enabled=progress, stream=stream)
    retries = max(0, retries)

    def kept() -> str:
        return (f"the {format_size(part.stat().st_size)} received are kept in {part} and the next attempt resumes "
                "from there" if part.exists() else "nothing was kept")

    for attempt in range(retries + 1):
        try:
            if time.monotonic() > stop_at:
                raise _Deadline("the deadline passed between attempts")
            # located afresh on every attempt: CDN links are signed for a limited time
            remote = locate(repo, filename, revision=revision, endpoint=endpoint, token=token,
                            timeout=max(0.01, min(timeout, stop_at - time.monotonic())))
            remote = _check_pinned(remote, sha256, size)
            _fetch(remote, part, token, timeout, bar, stop_at)
            break
        except _Deadline as e:
            bar.finish("deadline")
            raise DownloadError(f"download of {filename} from {repo} did not finish within its deadline of "
                                f"{deadline:g} s ({e}; `miniclip download --deadline` changes it); {kept()}") from e
        except _Transient as e:
            if attempt == retries:
                bar.finish("interrupted")
                raise DownloadError(f"download of {filename} from {repo} interrupted after {attempt + 1} "
                                    f"attempt(s): {e}; {kept()}") from e
            bar.finish(f"interrupted ({e}): resuming")
            time.sleep(max(0.0, min(retry_wait * (attempt + 1), stop_at - time.monotonic())))
    bar.finish("verifying" if sha256 or remote.sha256 else "done")
    _verify(part, remote, sha256)
    os.replace(part, dest)  # atomic: the final name appears complete or not at all
    return dest


def _check_pinned(remote: RemoteFile, sha256: str | None, size: int | None) -> RemoteFile:
    """Refuse a file the hub describes differently from the registry's pins; fill in the pinned size when the
    server gives none (so an endless body is still cut off at the right length)."""
    what = f"{remote.filename} of {remote.repo}"
    if sha256 and remote.sha256 and sha256.lower() != remote.sha256:
        raise DownloadError(f"{what}: the hub's SHA-256 {remote.sha256} differs from the {sha256.lower()} pinned "
                            "in miniclip's registry: the file on the hub has changed. Nothing was downloaded")
    if size is not None and remote.size is not None and size != remote.size:
        raise DownloadError(f"{what}: the hub reports {remote.size} bytes, miniclip's registry pins {size}: the "
                            "file on the hub has changed. Nothing was downloaded")
    return remote if remote.size is not None or size is None else dataclasses.replace(remote, size=size)


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
    """The activation a config file states (miniclip.weights.stated_activation); None if it says nothing or
    cannot be read (load_weights then reports a broken file with its own message)."""
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return stated_activation(config, layout) if isinstance(config, dict) else None


def _check_activation(info: ModelInfo, directory: Path) -> None:
    """The registry knows what each published model was trained with, and it is used when the config file
    says nothing about it (open_clip configs without "quick_gelu"); a config file that states another would
    give wrong outputs without any error, so refuse it."""
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
    for weights_file in WEIGHTS_FILES:
        if (directory / weights_file).is_file():
            return directory / weights_file
    return None


def _missing_from_hub(info: ModelInfo, file: str, error: DownloadError) -> DownloadError:
    """A file the registry lists that the hub does not have: say which, where, and what to use instead."""
    alternative = other_layout(info)
    instead = (f"The same weights in the {alternative.layout} layout are registered as {alternative.name}: "
               f"`miniclip download {alternative.name}` or miniclip.load({alternative.name!r}). "
               if alternative is not None else "")
    return DownloadError(f"{info.repo} has no {file} at revision {info.revision}, although miniclip's registry "
                         f"lists it for {info.name} ({error}). {instead}miniclip reads safetensors only and never "
                         "falls back to the pickled .bin files")


def download(name: str, *, progress: bool | None = None, timeout: float = DEFAULT_TIMEOUT,
             retries: int = DEFAULT_RETRIES, retry_wait: float = 1.0, deadline: float | None = DEFAULT_DEADLINE,
             cache: Path | None = None, stream: IO[str] | None = None) -> Path:
    """Download a model from `miniclip models`, or a hub repo id's weights + config, unless already on disk.
    Returns the weights file, which `miniclip.load` accepts. See `download_file` for the arguments.
    With $HF_HUB_OFFLINE set, only what is on disk is used."""
    kwargs = dict(progress=progress, timeout=timeout, retries=retries, retry_wait=retry_wait, deadline=deadline,
                  stream=stream)
    info = lookup(name)
    if info is not None and info.packaged is not None:  # ships with miniclip: nothing to download
        if not is_downloaded(info):
            raise DownloadError(not_downloaded_message(name, info))
        return model_dir(info) / info.weights_file
    if info is None and not is_repo_id(name):
        raise DownloadError(f"{name!r} is neither a model name (see `miniclip models`) nor a hub repo id "
                            "(owner/name)")
    found = local_weights(name, cache)
    if found is None and _offline():
        raise DownloadError(not_downloaded_message(name, info, cache))
    if info is not None:
        directory = repo_dir(info.repo, cache)
        for file in info.files:  # config first: a present weights file then means both are there
            size = info.size_bytes if file == info.weights_file and info.size_exact else None
            try:
                download_file(info.repo, file, directory, sha256=info.sha256.get(file), size=size,
                              revision=info.revision, **kwargs)
            except _NotFound as e:
                raise _missing_from_hub(info, file, e) from e
        _check_activation(info, directory)
        return directory / info.weights_file
    if found is not None:
        return found
    directory = repo_dir(name, cache)
    for weights_files, config_file in LAYOUT_FILES.values():  # open_clip first: OpenAI's own tensor names
        for weights_file in weights_files:
            try:
                locate(name, weights_file, timeout=timeout)
            except _NotFound:
                continue
            try:
                download_file(name, config_file, directory, **kwargs)
            except _NotFound:
                warnings.warn(f"{name} has no {config_file}: without it the activation must be given when "
                              "loading (activation='quick_gelu' for OpenAI weights, 'gelu' for LAION's)", stacklevel=2)
            return download_file(name, weights_file, directory, **kwargs)
    raise DownloadError(f"{name} has none of {', '.join(WEIGHTS_FILES)}: miniclip reads CLIP checkpoints in "
                        "safetensors only, in the open_clip or transformers layout")


def _offline() -> bool:
    """$HF_HUB_OFFLINE (or $TRANSFORMERS_OFFLINE) set to 1/true/yes/on, as the hub's client reads them."""
    return any(os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on") for var in OFFLINE_ENVS)


def not_downloaded_message(name: str, info: ModelInfo | None, cache: Path | None = None) -> str:
    if info is not None and info.package_dir is not None:
        return (f"{name} ships with miniclip, but {' + '.join(info.files[::-1])} are missing from "
                f"{info.package_dir}: reinstall miniclip")
    repo = info.repo if info else name
    files = " + ".join(info.files[::-1]) if info else " or ".join(
        f"{' / '.join(weights)} + {config}" for weights, config in LAYOUT_FILES.values())
    return (f"{name} is not downloaded and downloading is off (download=False or ${OFFLINE_ENV}=1): put {files} "
            f"from {hub_endpoint()}/{repo} into {repo_dir(repo, cache)}, e.g. by running `miniclip download {name}` "
            f"on a machine with a network and copying that folder, or set ${HOME_ENV} to where the files are. "
            f"{TRY_OFFLINE}")


def _resolve(source, allow_download: bool, progress: bool | None) -> tuple[object, ModelInfo | None]:
    if not isinstance(source, str) or Path(source).expanduser().exists():
        return source, None
    name = os.fspath(source)
    info = lookup(name)
    if info is None and not is_repo_id(name):
        return source, None
    found = local_weights(name)
    if found is None and (not allow_download or _offline()):
        raise DownloadError(not_downloaded_message(name, info))
    if found is not None:
        if info is not None:
            _check_activation(info, found.parent)
        return found, info
    try:
        return download(name, progress=progress), info
    except DownloadError as e:
        if info is None:  # it may have been meant as a path
            raise DownloadError(f"{name}: no such file or directory; as a hub repo id: {e}") from e
        raise


def resolve_source(source, *, allow_download: bool = True, progress: bool | None = None):
    """What `miniclip.load` should read for `source`. A path that exists is returned as is (local files
    always win), and so is any Path object; a string naming a registry model or alias, or a hub repo id,
    becomes the path of its weights file, downloaded first if need be unless `allow_download` is False or
    $HF_HUB_OFFLINE is set; anything else is returned as is, for the loader to report."""
    return _resolve(source, allow_download, progress)[0]


def resolve_model(source, activation: str | None = None, *, allow_download: bool = True,
                  progress: bool | None = None) -> tuple[object, str | None]:
    """`resolve_source`, plus the activation to load it with: the caller's, else for a registered model the
    registry's (used where its config file says nothing; a config that states another was refused already),
    else None (the config file decides)."""
    path, info = _resolve(source, allow_download, progress)
    if info is None:
        return path, activation
    if activation is not None and activation != info.activation:
        raise WeightsError(f"activation={activation!r} was asked for, but {info.name} was trained with "
                           f"{info.activation!r} (miniclip's registry); drop the argument")
    return path, info.activation
