"""A local stand-in for the Hugging Face hub, for tests/test_download.py. No internet: two HTTP servers on
127.0.0.1 (port 0), started and stopped by the test that uses them.

- the "hub" answers `/{owner}/{name}/resolve/{revision}/{file}` as huggingface.co does: for a large (LFS)
  file, 302 to the "CDN" with the SHA-256 in `X-Linked-Etag` (and `ETag`) and the size in `X-Linked-Size`;
  a small file (a config) is served directly with a git-blob ETag (40 hex digits, not a SHA-256); every
  answer carries the commit in `X-Repo-Commit`. The revision is one path segment, quoted (`refs%2Fpr%2F15`
  for a pull request's ref): files can be put on other revisions than main (`add_file(..., revision=)`).
  Unknown repos get 401 with `X-Error-Code: RepoNotFound` (what the real hub answers without a token),
  unknown revisions 404 RevisionNotFound, unknown files 404 EntryNotFound;
- the "CDN" (another origin, like the real one) serves `/files/...` with `Range` support (206 +
  `Content-Range`) and an ETag of its own that is not the SHA-256.

Misbehaviour on demand: cut the connection after N bytes, stall, trickle, send an endless body, serve
corrupted bytes, ignore `Range`, answer any status for a repo or file, require a token, move a repo
(relative redirect), redirect through the hub's own origin before the CDN, redirect anywhere (`file:`...),
leave out X-Repo-Commit (a proxy answering in the hub's place). Every request is logged (`requests`) so
tests can check what was asked, e.g. that a resumed download sent `Range`.
"""

from __future__ import annotations

import hashlib
import itertools
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


@dataclass
class Logged:
    server: str  # "hub" or "cdn"
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class Misbehaviour:
    cut_after: int | None = None  # send only this many body bytes, then close the connection
    stall_after: int | None = None  # send this many bytes, then go silent for stall_seconds
    stall_seconds: float = 0.0
    corrupt: bool = False  # flip one byte in the middle of what is served
    endless: bool = False  # no Content-Length, and bytes without end (until the client hangs up)
    trickle_seconds: float | None = None  # no Content-Length; the file one byte every trickle_seconds
    times: int = 1  # how many GETs misbehave before the file is served properly


@dataclass
class FakeHub:
    files: dict[tuple[str, str], bytes] = field(default_factory=dict)  # (repo, file) on main
    lfs: dict[tuple[str, str], bool] = field(default_factory=dict)
    refs: dict[tuple[str, str, str], bytes] = field(default_factory=dict)  # (repo, revision, file), not main
    requests: list[Logged] = field(default_factory=list)
    misbehave: dict[tuple[str, str], Misbehaviour] = field(default_factory=dict)
    status: dict[tuple[str, str | None], tuple[int, str]] = field(default_factory=dict)  # (repo, file|None)
    token: str | None = None  # if set, the hub answers 401 unless `Authorization: Bearer <token>`
    moved: dict[str, str] = field(default_factory=dict)  # old repo id -> new repo id
    no_etag: bool = False  # omit the SHA-256 headers (a mirror that does not send them)
    no_size: bool = False  # omit X-Linked-Size on LFS redirects
    ignore_range: bool = False  # the CDN answers 200 with the whole file even when asked for a range
    hop_via_hub: bool = False  # LFS redirects go to the hub's own /hop/... first, which redirects to the CDN
    redirect: dict[tuple[str, str], str] = field(default_factory=dict)  # (repo, file) -> the hub's Location
    cdn_redirect: str | None = None  # the CDN answers every GET with 302 to this URL
    no_commit: bool = False  # answer without X-Repo-Commit (a captive portal or proxy in the hub's place)

    def __post_init__(self):
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._servers: list[ThreadingHTTPServer] = []
        self.endpoint = self.cdn = ""

    # -- setting up -------------------------------------------------------------------------------

    def add_file(self, repo: str, name: str, data: bytes, lfs: bool | None = None, revision: str = "main") -> None:
        if revision == "main":
            self.files[repo, name] = data
        else:
            self.refs[repo, revision, name] = data
        self.lfs[repo, name] = name.endswith(".safetensors") if lfs is None else lfs

    def add_checkpoint(self, repo: str, directory: Path, revision: str = "main") -> None:
        for path in sorted(Path(directory).iterdir()):
            if path.is_file():
                self.add_file(repo, path.name, path.read_bytes(), revision=revision)

    def sha256(self, repo: str, name: str) -> str:
        return hashlib.sha256(self.files[repo, name]).hexdigest()

    def gets(self, name: str, server: str = "cdn") -> list[Logged]:
        """The GET requests for file `name` on one server."""
        return [r for r in self.requests if r.server == server and r.method == "GET"
                and urllib.parse.unquote(r.path.split("?")[0]).endswith("/" + name)]

    # -- running ----------------------------------------------------------------------------------

    def start(self) -> FakeHub:
        for role in ("hub", "cdn"):
            server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self, role))
            server.daemon_threads = True  # a stalled handler must not keep the test process alive
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
            self._servers.append(server)
        self.endpoint = f"http://127.0.0.1:{self._servers[0].server_address[1]}"
        self.cdn = f"http://127.0.0.1:{self._servers[1].server_address[1]}"
        return self

    def stop(self) -> None:
        self._stopping.set()
        for server in self._servers:
            server.shutdown()
            server.server_close()
        self._servers.clear()

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _make_handler(hub: FakeHub, role: str):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # one request per connection: a cut connection is unambiguous

        def log_message(self, *args) -> None:  # keep the test output clean
            pass

        def do_HEAD(self) -> None:
            self._handle(body=False)

        def do_GET(self) -> None:
            self._handle(body=True)

        def _handle(self, body: bool) -> None:
            with hub._lock:
                hub.requests.append(Logged(role, self.command, self.path, dict(self.headers.items())))
            if role == "hub":
                self._resolve(body)
            else:
                self._cdn(body)

        def _reply(self, status: int, headers: dict[str, str], data: bytes = b"", body: bool = True) -> None:
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if body and data:
                self.wfile.write(data)

        def _error(self, status: int, code: str, body: bool) -> None:
            self._reply(status, {"X-Error-Code": code, "X-Error-Message": f"fake hub: {code}"},
                        f"{status} {code}".encode(), body)

        # /{owner}/{name}/resolve/{revision}/{file}: split before unquoting, as the revision may hold "/"
        def _resolve(self, body: bool) -> None:
            if self.path.startswith("/hop/"):  # same origin as the hub, then on to the CDN
                return self._reply(302, {"Location": hub.cdn + self.path.removeprefix("/hop")}, body=body)
            parts = [urllib.parse.unquote(p) for p in self.path.split("?")[0].lstrip("/").split("/")]
            if len(parts) < 5 or parts[2] != "resolve":
                return self._error(404, "NotFound", body)
            repo, revision, name = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
            if repo in hub.moved:  # the hub sends a relative redirect for a renamed repo
                new = "/" + "/".join([hub.moved[repo], *self.path.split("?")[0].lstrip("/").split("/")[2:]])
                return self._reply(307, {"Location": new}, body=body)
            if hub.token and self.headers.get("Authorization") != f"Bearer {hub.token}":
                return self._error(401, "GatedRepo", body)
            for key in ((repo, name), (repo, None)):
                if key in hub.status:
                    return self._error(*hub.status[key], body)
            files = ({n: d for (r, n), d in hub.files.items() if r == repo} if revision == "main" else
                     {n: d for (r, rev, n), d in hub.refs.items() if r == repo and rev == revision})
            if not any(r == repo for r, _ in hub.files) and not any(r == repo for r, _, _ in hub.refs):
                return self._error(401, "RepoNotFound", body)  # the real hub's answer without a token
            if not files:
                return self._error(404, "RevisionNotFound", body)
            if name not in files:
                return self._error(404, "EntryNotFound", body)
            data = files[name]
            commit = {} if hub.no_commit else {"X-Repo-Commit": hashlib.sha1(f"{repo}@{revision}".encode()).hexdigest()}
            if hub.lfs[repo, name]:
                sha = hashlib.sha256(data).hexdigest()
                where = f"{hub.endpoint}/hop" if hub.hop_via_hub else hub.cdn
                query = "" if revision == "main" else f"revision={urllib.parse.quote(revision, safe='')}&"
                location = hub.redirect.get((repo, name), f"{where}/files/{repo}/{name}?{query}signature=fake")
                headers = {"Location": location} | commit
                if not hub.no_size:
                    headers["X-Linked-Size"] = str(len(data))
                if not hub.no_etag:
                    headers |= {"X-Linked-Etag": f'"{sha}"', "ETag": f'"{sha}"'}
                return self._reply(302, headers, body=body)
            self._serve(data, {"ETag": f'"{_git_blob_id(data)}"'} | commit, body, None)

        # /files/{owner}/{name}/{file}[?revision=...]
        def _cdn(self, body: bool) -> None:
            if hub.cdn_redirect is not None:
                return self._reply(302, {"Location": hub.cdn_redirect}, body=body)
            path, _, query = self.path.partition("?")
            parts = urllib.parse.unquote(path).lstrip("/").split("/")
            revision = urllib.parse.parse_qs(query).get("revision", ["main"])[0]
            repo, name = "/".join(parts[1:3]), "/".join(parts[3:])
            data = hub.files.get((repo, name)) if revision == "main" else hub.refs.get((repo, revision, name))
            if parts[0] != "files" or data is None:
                return self._error(404, "NoSuchKey", body)
            key = (repo, name)
            # an S3-style ETag of its own, which is not the SHA-256 and must not be taken for it
            headers = {"ETag": f'"{hashlib.md5(data).hexdigest()}"', "Accept-Ranges": "bytes"}
            misbehaviour = None
            if body:
                with hub._lock:
                    m = hub.misbehave.get(key)
                    if m is not None and m.times > 0:
                        m.times -= 1
                        misbehaviour = m
            self._serve(data, headers, body, misbehaviour)

        def _serve(self, data: bytes, headers: dict[str, str], body: bool, m: Misbehaviour | None) -> None:
            start, status = 0, 200
            wanted = self.headers.get("Range")
            if wanted and not hub.ignore_range:
                first = int(wanted.removeprefix("bytes=").split("-")[0])
                if first >= len(data):
                    return self._reply(416, {"Content-Range": f"bytes */{len(data)}"}, body=body)
                start, status = first, 206
                headers = headers | {"Content-Range": f"bytes {first}-{len(data) - 1}/{len(data)}"}
            payload = data[start:]
            if m is not None and (m.endless or m.trickle_seconds is not None):
                return self._endless(status, headers, payload, m)
            if m is not None and m.corrupt:
                middle = len(payload) // 2
                payload = payload[:middle] + bytes([payload[middle] ^ 0xFF]) + payload[middle + 1:]
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(payload)))  # always the full length promised
            self.end_headers()
            if not body:
                return
            limit = len(payload)
            if m is not None and m.cut_after is not None:
                limit = min(limit, m.cut_after)
            if m is not None and m.stall_after is not None:
                self.wfile.write(payload[:m.stall_after])
                self.wfile.flush()
                deadline = time.monotonic() + m.stall_seconds
                while time.monotonic() < deadline and not hub._stopping.is_set():
                    time.sleep(0.02)
                return
            self.wfile.write(payload[:limit])
            self.wfile.flush()
            # returning closes the connection (HTTP/1.0): a cut leaves the client short of Content-Length

        def _endless(self, status: int, headers: dict[str, str], payload: bytes, m: Misbehaviour) -> None:
            """No Content-Length (HTTP/1.0: the body ends when the connection closes). Endless: the file's
            bytes, then more, until the client hangs up or the hub stops. Trickle: the file's bytes, one at a
            time (never silent long enough for a read timeout)."""
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            block = (payload or b"x") * (1 + (1 << 16) // max(1, len(payload)))
            try:
                for i in itertools.count():
                    if hub._stopping.is_set() or (m.trickle_seconds is not None and i >= len(payload)):
                        break
                    if m.trickle_seconds is not None:
                        self.wfile.write(payload[i:i + 1])
                        self.wfile.flush()
                        time.sleep(m.trickle_seconds)
                    else:
                        self.wfile.write(block)
            except OSError:  # the client hung up: what a bounded client does
                pass

    return Handler
