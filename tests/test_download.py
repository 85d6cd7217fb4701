"""The model registry, `miniclip download` and `miniclip.load(name)`, against a local fake hub.

No internet: tests/fake_hub.py serves the seeded odd-sized checkpoints (tests/seeded.py) from 127.0.0.1 the
way huggingface.co serves real ones (resolve URL -> 302 to a file server, SHA-256 in X-Linked-Etag, Range
requests), and misbehaves on demand: cut connections, stalls, corrupted bytes, 404, 401/403, 500.
"""

from __future__ import annotations

import errno
import io
import json
import math
import os
import shutil
import socket
import sys
import time
import urllib.error
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
from fake_hub import FakeHub, Misbehaviour
from seeded import ARCHS

import miniclip
from miniclip import store
from miniclip.cli import main
from miniclip.config import ARCHITECTURES
from miniclip.errors import DownloadError, WeightsError
from miniclip.hub import download as hub
from miniclip.hub import registry
from miniclip.terminal import Progress
from miniclip.weights import LAYOUT_FILES, expected_shapes, find_weights_file

OC_REPO, HF_REPO = "tests/odd-oc", "tests/odd-hf"
WEIGHTS, CONFIG = "open_clip_model.safetensors", "open_clip_config.json"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def fake(tmp_path, monkeypatch, checkpoint):
    """A fake hub serving the odd-sized checkpoints in both layouts, with $HF_ENDPOINT pointing at it and
    $MINICLIP_HOME at an empty folder; stopped when the test ends."""
    monkeypatch.setenv("MINICLIP_HOME", str(tmp_path / "home"))
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no token file from this machine's login
    with FakeHub() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
        server.add_checkpoint(OC_REPO, checkpoint("odd_oc"))
        server.add_checkpoint(HF_REPO, checkpoint("odd_hf"))
        yield server


def make_info(name: str = "Tiny-Test", repo: str = OC_REPO, activation: str = "gelu", sha256: dict | None = None,
              layout: str = "open_clip", revision: str = "main", size: int | None = None) -> registry.ModelInfo:
    (weights, *_), config = LAYOUT_FILES[layout]
    return registry.ModelInfo(name=name, repo=repo, layout=layout, weights_file=weights, config_file=config,
                              activation=activation, image_size=80, size_bytes=size or 17_000_000,
                              size_exact=size is not None, license="MIT", imagenet_top1=None,
                              sha256=sha256 or {weights: None, config: None}, revision=revision)


@pytest.fixture
def tiny(monkeypatch):
    """A registry entry for the fake hub's open_clip repo, removed after the test."""
    info = make_info()
    monkeypatch.setitem(registry.models(), info.name, info)
    return info


def model_dir(tmp_path: Path, repo: str = OC_REPO) -> Path:
    return tmp_path / "home" / repo.replace("/", "--")


def assert_same_model(a, b) -> None:
    tokens = miniclip.tokenize(["a diagram", "a dog"], context_length=a.config.context_length)
    assert a.config == b.config
    np.testing.assert_array_equal(a.encode_text(tokens), b.encode_text(tokens))


# ---------------------------------------------------------------------------------------------------
# The registry


REQUIRED = {  # name -> (hub repo, layout, activation, image size)
    "ViT-B-32": ("timm/vit_base_patch32_clip_224.openai", "open_clip", "quick_gelu", 224),
    "ViT-B-16": ("timm/vit_base_patch16_clip_224.openai", "open_clip", "quick_gelu", 224),
    "ViT-L-14": ("timm/vit_large_patch14_clip_224.openai", "open_clip", "quick_gelu", 224),
    "ViT-L-14-336": ("timm/vit_large_patch14_clip_336.openai", "open_clip", "quick_gelu", 336),
    "ViT-B-32-hf": ("openai/clip-vit-base-patch32", "transformers", "quick_gelu", 224),
    "ViT-B-16-hf": ("openai/clip-vit-base-patch16", "transformers", "quick_gelu", 224),
    "ViT-L-14-hf": ("openai/clip-vit-large-patch14", "transformers", "quick_gelu", 224),
    "ViT-L-14-336-hf": ("openai/clip-vit-large-patch14-336", "transformers", "quick_gelu", 336),
    "ViT-B-32-laion2b_s34b_b79k": ("laion/CLIP-ViT-B-32-laion2B-s34B-b79K", "open_clip", "gelu", 224),
    "ViT-B-32-laion2b_s34b_b79k-hf": ("laion/CLIP-ViT-B-32-laion2B-s34B-b79K", "transformers", "gelu", 224),
}
FILES = {"open_clip": ("open_clip_config.json", "open_clip_model.safetensors"),
         "transformers": ("config.json", "model.safetensors")}


def test_registry_lists_the_published_models():
    names = miniclip.available_models()
    assert set(REQUIRED) <= set(names)
    for name, (repo, layout, activation, image_size) in REQUIRED.items():
        info = registry.lookup(name)
        assert (info.repo, info.layout, info.activation, info.image_size) == (repo, layout, activation, image_size)
        assert info.files == FILES[layout] and set(info.sha256) == set(info.files)
        assert info.license == "MIT"
        # float32 tensor data: 4 bytes per parameter of the architecture, plus a header of some tens of kB
        # when the size is the file's exact one
        arch = ARCHITECTURES[name.removesuffix("-hf").removesuffix("-laion2b_s34b_b79k")]
        data_bytes = 4 * sum(math.prod(s) for s in expected_shapes(arch).values())
        if info.size_exact:
            assert 0 < info.size_bytes - data_bytes < 100_000, name
        else:
            assert info.size_bytes == data_bytes, name
    top1 = {n: registry.lookup(n).imagenet_top1 for n in REQUIRED}
    assert [round(top1[n], 1) for n in ("ViT-B-32", "ViT-B-16", "ViT-L-14", "ViT-L-14-336")] == [63.3, 68.3, 75.5, 76.6]
    assert round(top1["ViT-B-32-laion2b_s34b_b79k"], 1) == 66.6
    paper = [registry.lookup(n).imagenet_top1_paper for n in ("ViT-B-32", "ViT-B-16", "ViT-L-14", "ViT-L-14-336")]
    assert paper == [63.2, 68.6, 75.3, 76.2]


@pytest.mark.parametrize("alias, name", [("ViT-B/32", "ViT-B-32"), ("vit-l/14@336px", "ViT-L-14-336"),
                                         ("ViT-B-16-openai", "ViT-B-16"), ("vit-b-32-hf", "ViT-B-32-hf"),
                                         ("timm/vit_base_patch32_clip_224.openai", "ViT-B-32"),
                                         ("openai/clip-vit-large-patch14", "ViT-L-14-hf"),
                                         ("laion/CLIP-ViT-B-32-laion2B-s34B-b79K", "ViT-B-32-laion2b_s34b_b79k")])
def test_lookup_by_alias_and_repo_id(alias, name):
    assert registry.lookup(alias).name == name


def test_models_command_prints_the_table(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("MINICLIP_HOME", str(tmp_path))
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name, (repo, layout, _, _) in REQUIRED.items():
        line = next(row for row in out.splitlines() if row.split()[:1] == [name])
        assert repo in line and layout in line and "MIT" in line
    assert "~605 MB" in out and "~1.71 GB" in out and "63.3%" in out and "66.6%" in out
    assert "openai/clip-vit-base-patch32@refs/pr/15" in out and " 605 MB " in out  # a revision; an exact size
    assert str(tmp_path) in out


@pytest.mark.parametrize("text, expected", [("owner/name", True), ("timm/vit_base_patch32_clip_224.openai", True),
                                            ("ViT-B-32", False), ("weights/model.safetensors", False),
                                            ("/abs/path", False), ("a/b/c", False), ("../x", False)])
def test_is_repo_id(text, expected):
    assert hub.is_repo_id(text) is expected


def test_cache_dir_rules(monkeypatch, tmp_path):
    monkeypatch.setenv("MINICLIP_HOME", str(tmp_path / "mine"))
    assert store.weights_dir() == tmp_path / "mine"
    monkeypatch.delenv("MINICLIP_HOME")
    checkout = Path(miniclip.__file__).resolve().parents[1] / "weights"
    if os.access(checkout, os.W_OK):  # this is a source checkout: its weights/ folder
        assert store.weights_dir() == checkout
    monkeypatch.setattr(store, "_checkout_weights_dir", lambda: None)  # as when installed from a wheel
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert store.weights_dir() == tmp_path / "xdg" / "miniclip"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert store.weights_dir() == Path.home() / ".cache" / "miniclip"
    assert hub.repo_dir("timm/x.openai", tmp_path).name == "timm--x.openai"


# ---------------------------------------------------------------------------------------------------
# Downloading and loading


def test_load_by_name_downloads_then_uses_the_cache(fake, tiny, tmp_path, checkpoint):
    model, preprocess = miniclip.load("Tiny-Test")
    reference, _ = miniclip.load(checkpoint("odd_oc"))
    assert_same_model(model, reference)
    directory = model_dir(tmp_path)
    assert sorted(p.name for p in directory.iterdir()) == [CONFIG, WEIGHTS]  # no .part left behind
    assert (directory / WEIGHTS).read_bytes() == (checkpoint("odd_oc") / WEIGHTS).read_bytes()
    # the weights came from the file server, the config (a small, non-LFS file) from the hub directly
    assert len(fake.gets(WEIGHTS)) == 1 and len(fake.gets(CONFIG, server="hub")) == 1

    before = len(fake.requests)
    miniclip.load("Tiny-Test")
    assert len(fake.requests) == before  # on disk: no request at all
    fake.stop()
    model, _ = miniclip.load("Tiny-Test", download=False)
    assert_same_model(model, reference)


def test_load_repo_id_detects_the_layout(fake, tmp_path):
    model, _ = miniclip.load(HF_REPO)  # not in the registry: open_clip files tried first, then transformers
    assert model.config == ARCHS["odd_hf"].config
    heads = [r.path.rsplit("/", 1)[1] for r in fake.requests if r.server == "hub" and r.method == "HEAD"]
    assert heads[:3] == [WEIGHTS, "open_clip_pytorch_model.safetensors", "model.safetensors"]
    assert sorted(p.name for p in model_dir(tmp_path, HF_REPO).iterdir()) == ["config.json", "model.safetensors"]

    model, _ = miniclip.load(OC_REPO)
    assert model.config == ARCHS["odd_oc"].config


def test_local_path_wins_over_a_repo_id(fake, tmp_path, monkeypatch, checkpoint):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(checkpoint("odd_hf"), tmp_path / OC_REPO)  # a folder that looks like a repo id
    model, _ = miniclip.load(OC_REPO)
    assert model.config == ARCHS["odd_hf"].config and fake.requests == []
    with pytest.raises(WeightsError, match="no such file"):
        miniclip.load(Path(HF_REPO))  # a Path object is always a path, never a name
    assert fake.requests == []


def test_moved_repo_is_followed(fake, tmp_path):
    fake.moved["tests/old-name"] = OC_REPO  # the hub answers 307 with a relative Location
    path = hub.download("tests/old-name", progress=False)
    assert path == model_dir(tmp_path, "tests/old-name") / WEIGHTS
    assert hub.sha256_file(path) == fake.sha256(OC_REPO, WEIGHTS)


def test_interrupted_download_resumes_with_range(fake, tiny, tmp_path):
    size = len(fake.files[OC_REPO, WEIGHTS])
    cut = size // 3
    fake.misbehave[OC_REPO, WEIGHTS] = Misbehaviour(cut_after=cut)
    with pytest.raises(DownloadError, match="interrupted.*resumes") as error:
        hub.download("Tiny-Test", retries=0, progress=False)
    assert f"after {cut} of {size} bytes" in str(error.value)
    directory = model_dir(tmp_path)
    part = directory / (WEIGHTS + ".part")
    assert part.stat().st_size == cut and not (directory / WEIGHTS).exists()
    # nothing half-downloaded is taken for the model
    with pytest.raises(DownloadError, match="not downloaded"):
        miniclip.load("Tiny-Test", download=False)
    with pytest.raises(WeightsError, match="found no .safetensors file"):
        miniclip.load(directory)

    path = hub.download("Tiny-Test", retries=0, progress=False)
    first, second = fake.gets(WEIGHTS)
    assert "Range" not in first.headers and second.headers["Range"] == f"bytes={cut}-"
    assert hub.sha256_file(path) == fake.sha256(OC_REPO, WEIGHTS) and not part.exists()


def test_interruptions_are_retried_within_one_call(fake, tiny):
    cut = 4_000_000
    fake.misbehave[OC_REPO, WEIGHTS] = Misbehaviour(cut_after=cut, times=2)
    path = hub.download("Tiny-Test", retries=3, retry_wait=0, progress=False)
    assert [g.headers.get("Range") for g in fake.gets(WEIGHTS)] == [None, f"bytes={cut}-", f"bytes={2 * cut}-"]
    assert hub.sha256_file(path) == fake.sha256(OC_REPO, WEIGHTS)


def test_stalled_server_times_out_and_keeps_what_arrived(fake, tiny):
    fake.misbehave[OC_REPO, WEIGHTS] = Misbehaviour(stall_after=100_000, stall_seconds=10)
    start = time.monotonic()
    with pytest.raises(DownloadError, match="timed out"):
        hub.download("Tiny-Test", retries=0, timeout=0.5, progress=False)
    assert time.monotonic() - start < 5
    hub.download("Tiny-Test", retries=0, timeout=5, progress=False)
    assert fake.gets(WEIGHTS)[-1].headers["Range"] == "bytes=100000-"


def test_server_ignoring_range_restarts_cleanly(fake, tiny):
    fake.misbehave[OC_REPO, WEIGHTS] = Misbehaviour(cut_after=1_000_000)
    fake.ignore_range = True
    path = hub.download("Tiny-Test", retries=1, retry_wait=0, progress=False)
    assert hub.sha256_file(path) == fake.sha256(OC_REPO, WEIGHTS)


def test_corrupted_download_is_deleted(fake, tiny, tmp_path):
    fake.misbehave[OC_REPO, WEIGHTS] = Misbehaviour(corrupt=True)
    with pytest.raises(DownloadError, match="checksum mismatch.*from the hub.*deleted"):
        hub.download("Tiny-Test", progress=False)
    assert sorted(p.name for p in model_dir(tmp_path).iterdir()) == [CONFIG]  # nothing that could be loaded
    with pytest.raises(DownloadError, match="not downloaded"):
        miniclip.load("Tiny-Test", download=False)
    hub.download("Tiny-Test", progress=False)  # the next attempt gets good bytes
    miniclip.load("Tiny-Test", download=False)


def test_registry_checksum_is_checked_too(fake, monkeypatch, tmp_path):
    wrong = make_info("Pinned-Wrong", sha256={WEIGHTS: "0" * 64, CONFIG: None})
    monkeypatch.setitem(registry.models(), wrong.name, wrong)
    with pytest.raises(DownloadError, match="differs from the 0{64} pinned"):
        hub.download(wrong.name, progress=False)
    assert fake.gets(WEIGHTS) == []  # refused before downloading anything

    fake.no_etag = True  # a mirror that reports no SHA-256: the registry's is the only check
    with pytest.raises(DownloadError, match="checksum mismatch.*miniclip's registry"):
        hub.download(wrong.name, progress=False)
    assert not (model_dir(tmp_path) / WEIGHTS).exists()
    right = make_info("Pinned-Right", sha256={WEIGHTS: fake.sha256(OC_REPO, WEIGHTS), CONFIG: None})
    monkeypatch.setitem(registry.models(), right.name, right)
    assert hub.download(right.name, progress=False).is_file()


def test_activation_disagreeing_with_the_registry_is_refused(fake, monkeypatch, checkpoint):
    config = json.loads(fake.files[OC_REPO, CONFIG])
    assert "quick_gelu" not in config["model_cfg"]  # silent: GELU to open_clip, but no contradiction
    config["model_cfg"]["quick_gelu"] = False  # now it states GELU
    fake.add_file("tests/says-gelu", WEIGHTS, fake.files[OC_REPO, WEIGHTS])
    fake.add_file("tests/says-gelu", CONFIG, json.dumps(config).encode())
    info = make_info("Says-GELU", repo="tests/says-gelu", activation="quick_gelu")
    monkeypatch.setitem(registry.models(), info.name, info)
    with pytest.raises(WeightsError, match='gives activation .gelu., but Says-GELU was trained with .quick_gelu.*'
                                           '"quick_gelu": true'):
        miniclip.load(info.name)


def test_registry_activation_is_used_where_the_config_is_silent(fake, monkeypatch, tmp_path, checkpoint):
    info = make_info("Silent-QuickGELU", activation="quick_gelu")  # the served config does not mention quick_gelu
    monkeypatch.setitem(registry.models(), info.name, info)
    model, _ = miniclip.load(info.name)
    assert model.config.activation == "quick_gelu"
    by_path, _ = miniclip.load(model_dir(tmp_path))  # the same files by path: open_clip's default, GELU
    assert by_path.config.activation == "gelu" and by_path.config == ARCHS["odd_oc"].config
    tokens = miniclip.tokenize(["a dog"], context_length=model.config.context_length)
    assert not np.allclose(model.encode_text(tokens), by_path.encode_text(tokens))  # it really changes the model
    assert miniclip.load(info.name, activation="quick_gelu")[0].config == model.config
    with pytest.raises(WeightsError, match="activation='gelu' was asked for, but Silent-QuickGELU was trained with"):
        miniclip.load(info.name, activation="gelu")
    # a caller's activation fills in a silent config for any file, and contradicts only a config that states one
    assert miniclip.load(model_dir(tmp_path), activation="quick_gelu")[0].config.activation == "quick_gelu"
    with pytest.raises(WeightsError, match="activation='gelu' was asked for, but .* says 'quick_gelu'"):
        miniclip.load(checkpoint("odd_hf"), activation="gelu")


# ---------------------------------------------------------------------------------------------------
# Errors


def test_unknown_repo_and_file(fake, tiny, tmp_path):
    # the hub answers 401 RepoNotFound for a repo it does not have (or will not show without a token)
    with pytest.raises(DownloadError, match="no repository tests/nope on the hub, or it is private .HTTP 401.*"
                                            "If it is private: set \\$HF_TOKEN"):
        hub.download("tests/nope", progress=False)
    with pytest.raises(DownloadError, match="tests/nope: no such file or directory; as a hub repo id: no repo"):
        miniclip.load("tests/nope")
    with pytest.raises(DownloadError, match="neither a model name"):
        hub.download("no-such-model")
    fake.status[OC_REPO, CONFIG] = (404, "EntryNotFound")
    with pytest.raises(DownloadError, match=f"{OC_REPO} has no file {CONFIG} .HTTP 404"):
        hub.download("Tiny-Test", progress=False)


def test_repo_without_safetensors(fake):
    fake.add_file("tests/pickles", "pytorch_model.bin", b"not for us")
    with pytest.raises(DownloadError, match="has none of open_clip_model.safetensors, "
                                            "open_clip_pytorch_model.safetensors, model.safetensors"):
        hub.download("tests/pickles", progress=False)
    assert all(not r.path.endswith(".bin") for r in fake.requests)  # never a pickle


def test_token_for_private_and_gated_repos(fake, tiny, monkeypatch):
    fake.token = "hf_secret"
    with pytest.raises(DownloadError, match="HTTP 401.*set \\$HF_TOKEN"):
        hub.download("Tiny-Test", progress=False)
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    with pytest.raises(DownloadError, match="HF_TOKEN was refused"):
        hub.download("Tiny-Test", progress=False)
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    assert hub.download("Tiny-Test", progress=False).is_file()
    hub_requests = [r for r in fake.requests if r.server == "hub"]
    assert hub_requests[-1].headers["Authorization"] == "Bearer hf_secret"
    # the token goes to the hub only, never to the file server the hub redirects to
    assert fake.gets(WEIGHTS) and all("Authorization" not in r.headers for r in fake.gets(WEIGHTS))


def test_token_is_dropped_when_a_redirect_leaves_the_hub(fake, tiny, monkeypatch):
    fake.token = "hf_secret"
    fake.hop_via_hub = True  # hub -> hub's /hop/ (token sent: same origin) -> file server (token dropped)
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    hub.download("Tiny-Test", progress=False)
    hops = [r for r in fake.requests if r.server == "hub" and r.path.startswith("/hop/")]
    assert hops and all(r.headers.get("Authorization") == "Bearer hf_secret" for r in hops)
    assert fake.gets(WEIGHTS) and all("Authorization" not in r.headers for r in fake.gets(WEIGHTS))


def test_gated_repo_message(fake, tiny):
    fake.status[OC_REPO, None] = (403, "GatedRepo")
    with pytest.raises(DownloadError, match="HTTP 403.*is gated: accept its conditions.*HF_TOKEN"):
        miniclip.load("Tiny-Test")


def test_server_errors_are_retried_then_reported(fake, tiny):
    fake.status[OC_REPO, CONFIG] = (500, "InternalError")
    with pytest.raises(DownloadError, match="interrupted after 2 attempt.*HTTP 500"):
        hub.download("Tiny-Test", retries=1, retry_wait=0, progress=False)
    assert sum(r.method == "HEAD" and r.path.endswith(CONFIG) for r in fake.requests) == 2


def test_server_gone(fake, tiny, monkeypatch, capsys):
    with socket.socket() as s:  # a port that was free a moment ago: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(DownloadError, match="cannot reach 127.0.0.1.*Are you offline"):
        miniclip.load("Tiny-Test")
    assert main(["download", "Tiny-Test", "--quiet"]) == 1
    assert "miniclip: error: cannot reach" in capsys.readouterr().err


def test_offline_use_says_where_the_files_go(fake, tiny, monkeypatch, tmp_path):
    for offline in ({"download": False}, {}):
        if not offline:
            monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        with pytest.raises(DownloadError, match="Tiny-Test is not downloaded") as error:
            miniclip.load("Tiny-Test", **offline)
        message = str(error.value)
        assert f"{WEIGHTS} + {CONFIG}" in message and str(model_dir(tmp_path)) in message
        assert "miniclip download Tiny-Test" in message
    assert fake.requests == []


def test_disk_full_is_reported_up_front(fake, tiny, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(hub.shutil, "disk_usage", lambda path: usage(10**6, 10**6 - 1000, 1000))
    with pytest.raises(DownloadError, match="not enough disk space.*MB more are needed"):
        hub.download("Tiny-Test", progress=False)
    assert fake.gets(WEIGHTS) == []


def test_disk_full_while_writing_keeps_the_part_to_resume(fake, tiny, monkeypatch, tmp_path):
    class FillsUp:
        def __init__(self, f):
            self.f, self.written = f, 0

        def write(self, data):
            if self.written + len(data) > 3_000_000:
                raise OSError(errno.ENOSPC, "No space left on device")
            self.written += len(data)
            return self.f.write(data)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    real_open = hub._open_for_writing
    monkeypatch.setattr(hub, "_open_for_writing", lambda path, mode: FillsUp(real_open(path, mode)))
    with pytest.raises(DownloadError, match="not enough disk space.*kept and will resume"):
        hub.download("Tiny-Test", progress=False)
    kept = (model_dir(tmp_path) / (WEIGHTS + ".part")).stat().st_size
    assert 0 < kept <= 3_000_000
    monkeypatch.setattr(hub, "_open_for_writing", real_open)
    path = hub.download("Tiny-Test", progress=False)
    assert fake.gets(WEIGHTS)[-1].headers["Range"] == f"bytes={kept}-"
    assert hub.sha256_file(path) == fake.sha256(OC_REPO, WEIGHTS)


# ---------------------------------------------------------------------------------------------------
# Progress and the command line


def test_progress_bar_on_a_terminal_only(fake, tiny, monkeypatch, capsys):
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    hub.download("Tiny-Test")
    drawn = terminal.getvalue()
    assert f"\r{OC_REPO}/{WEIGHTS}" in drawn and "100%" in drawn and "MB / 18 MB" in drawn and "/s" in drawn
    assert "verifying" in drawn

    monkeypatch.setattr(sys, "stderr", sys.__stderr__)
    shutil.rmtree(store.weights_dir())
    hub.download("Tiny-Test")  # stderr captured by pytest: not a terminal
    assert capsys.readouterr().err == ""


def test_progress_line_shows_rate_and_eta():
    now = [100.0]
    out = io.StringIO()
    bar = Progress("model.safetensors", enabled=True, stream=out, clock=lambda: now[0])
    bar.start(0, 100_000_000)
    now[0] += 2.0
    bar.update(25_000_000)
    line = out.getvalue().split("\r")[-1]
    assert "[#####...............]   25%  25 MB / 100 MB  12 MB/s  ETA 0:06" in line


def test_download_command(fake, tiny, monkeypatch, capsys, tmp_path):
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main(["download", "Tiny-Test", "--quiet"]) == 0
    assert capsys.readouterr().out.strip() == f"Tiny-Test: {model_dir(tmp_path) / WEIGHTS}"
    assert "\r" not in terminal.getvalue()  # --quiet: no progress bar even on a terminal
    assert main(["download", HF_REPO]) == 0
    assert "\r" in terminal.getvalue() and f"--weights {model_dir(tmp_path, HF_REPO)}" in terminal.getvalue()
    assert main(["models"]) == 0
    line = next(row for row in capsys.readouterr().out.splitlines() if row.startswith("Tiny-Test "))
    assert line.rstrip().endswith("yes")  # the "on disk" column


def test_convert_by_name_downloads_first(fake, tiny, tmp_path, capsys):
    assert main(["convert", "Tiny-Test", str(tmp_path / "half"), "--dtype", "float16"]) == 0
    assert (tmp_path / "half" / WEIGHTS).stat().st_size < 0.501 * len(fake.files[OC_REPO, WEIGHTS])
    assert (tmp_path / "half" / CONFIG).read_bytes() == fake.files[OC_REPO, CONFIG]
    assert (model_dir(tmp_path) / WEIGHTS).is_file()  # the source was downloaded to the cache first


# ---------------------------------------------------------------------------------------------------
# The registry as the hub has it: revisions, pins, missing files (issue 12)


def test_transformers_entries_fetch_the_pull_request_that_has_safetensors():
    """openai/clip-vit-base-patch32, -base-patch16, -large-patch14-336 have no model.safetensors on main; the
    hub's conversion pull requests do. The values below are the public records quoted in issue 12."""
    pins = {"ViT-B-32-hf": ("refs/pr/15", None), "ViT-B-16-hf": ("refs/pr/10", "846bf12e"),
            "ViT-L-14-336-hf": ("refs/pr/8", "f51cb7b0"), "ViT-L-14-hf": ("main", "a2bf730a"),
            "ViT-B-32": ("main", "e6d1bd77"), "ViT-L-14-336": ("main", None)}
    for name, (revision, sha_prefix) in pins.items():
        info = registry.lookup(name)
        assert info.revision == revision, name
        digest = info.sha256[info.weights_file]
        assert (digest or "")[:8] == (sha_prefix or ""), name
    exact = {"ViT-B-32": 605_143_284, "ViT-B-16": 598_516_980, "ViT-L-14": 1_710_517_724,
             "ViT-B-32-laion2b_s34b_b79k": 605_143_316}
    assert {n: i.size_bytes for n, i in registry.models().items() if i.size_exact and i.packaged is None} == exact
    assert hub.resolve_url("https://h", "openai/x", "refs/pr/15", "model.safetensors") == \
        "https://h/openai/x/resolve/refs%2Fpr%2F15/model.safetensors"  # the revision quoted whole, as the hub wants


def test_download_from_a_pull_request_revision(fake, monkeypatch, tmp_path, checkpoint):
    repo = "tests/pr-only"  # like openai/clip-vit-base-patch32: main has no safetensors, refs/pr/15 has
    fake.add_file(repo, "pytorch_model.bin", b"pickle: never fetched")
    fake.add_file(repo, "config.json", fake.files[HF_REPO, "config.json"])
    fake.add_checkpoint(repo, checkpoint("odd_hf"), revision="refs/pr/15")
    info = make_info("PR-Test-hf", repo=repo, layout="transformers", activation="quick_gelu", revision="refs/pr/15",
                     size=len(fake.files[HF_REPO, "model.safetensors"]))
    monkeypatch.setitem(registry.models(), info.name, info)
    model, _ = miniclip.load(info.name)
    assert model.config == ARCHS["odd_hf"].config
    heads = [r.path for r in fake.requests if r.server == "hub" and r.method == "HEAD"]
    assert heads and all("/resolve/refs%2Fpr%2F15/" in path for path in heads)
    assert (model_dir(tmp_path, repo) / "model.safetensors").read_bytes() == fake.files[HF_REPO, "model.safetensors"]

    on_main = make_info("Main-Test-hf", repo=repo, layout="transformers", activation="quick_gelu")
    monkeypatch.setitem(registry.models(), on_main.name, on_main)
    shutil.rmtree(model_dir(tmp_path, repo))
    with pytest.raises(DownloadError, match="tests/pr-only has no model.safetensors at revision main, although"):
        hub.download(on_main.name, progress=False)
    gone = make_info("Gone-Test-hf", repo=repo, layout="transformers", revision="refs/pr/99")
    monkeypatch.setitem(registry.models(), gone.name, gone)
    with pytest.raises(DownloadError, match="at revision refs/pr/99.*has no such revision"):
        hub.download(gone.name, progress=False)
    assert not any(r.path.endswith(".bin") for r in fake.requests)


def test_registered_file_missing_on_the_hub_names_the_alternative(fake, monkeypatch, tmp_path):
    oc = make_info("Pair-Test")
    hf = make_info("Pair-Test-hf", repo=HF_REPO, layout="transformers", activation="quick_gelu")  # odd_hf's
    for info in (oc, hf):
        monkeypatch.setitem(registry.models(), info.name, info)
    del fake.files[OC_REPO, WEIGHTS]  # as the L/14-336 open_clip repo may have only open_clip_pytorch_model.bin
    fake.add_file(OC_REPO, "open_clip_pytorch_model.bin", b"pickle: never fetched")
    with pytest.raises(DownloadError) as error:
        miniclip.load("Pair-Test")
    message = str(error.value)
    assert f"{OC_REPO} has no {WEIGHTS} at revision main" in message and "registry lists it for Pair-Test" in message
    assert "registered as Pair-Test-hf: `miniclip download Pair-Test-hf`" in message and "never" in message
    assert not any(r.path.endswith(".bin") for r in fake.requests)
    assert miniclip.load("Pair-Test-hf")[0].config == ARCHS["odd_hf"].config  # the alternative works


def test_pinned_size_is_checked_and_bounds_the_download(fake, monkeypatch, tmp_path):
    size = len(fake.files[OC_REPO, WEIGHTS])
    wrong = make_info("Size-Wrong", size=size + 1)
    monkeypatch.setitem(registry.models(), wrong.name, wrong)
    with pytest.raises(DownloadError, match=f"hub reports {size} bytes, miniclip's registry pins {size + 1}"):
        hub.download(wrong.name, progress=False)
    assert fake.gets(WEIGHTS) == []  # refused before downloading anything
    # a mirror that reports no size and sends an endless body: the registry's size stops it
    fake.no_size = True
    fake.misbehave[OC_REPO, WEIGHTS] = Misbehaviour(endless=True)
    right = make_info("Size-Right", size=size)
    monkeypatch.setitem(registry.models(), right.name, right)
    with pytest.raises(DownloadError, match=f"sent more than the {size} bytes announced"):
        hub.download(right.name, progress=False)
    assert not (model_dir(tmp_path) / (WEIGHTS + ".part")).exists()
    assert hub.download(right.name, progress=False).stat().st_size == size  # served properly the next time


# ---------------------------------------------------------------------------------------------------
# The hub's conventions: token, offline mode, X-Repo-Commit, layouts (issue 12)


@pytest.mark.parametrize("where", ["HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH", "HF_HOME", "XDG", "HOME"])
def test_token_from_the_environment_or_the_token_file(fake, tiny, monkeypatch, tmp_path, where):
    fake.token = "hf_secret"
    written = "hf_secret\n"  # what `echo $TOKEN > file` or a copied .env line leaves: a trailing newline
    if where in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.setenv(where, written)
    else:
        monkeypatch.delenv("HF_HOME")
        folder = {"HF_TOKEN_PATH": tmp_path / "elsewhere", "HF_HOME": tmp_path / "hfhome",
                  "XDG": tmp_path / "xdg" / "huggingface", "HOME": tmp_path / "user" / ".cache" / "huggingface"}[where]
        folder.mkdir(parents=True)
        (folder / ("my-token" if where == "HF_TOKEN_PATH" else "token")).write_text(written)
        monkeypatch.setenv("HOME", str(tmp_path / "user"))
        monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
        if where == "HF_TOKEN_PATH":
            monkeypatch.setenv("HF_TOKEN_PATH", str(folder / "my-token"))
        elif where == "HF_HOME":
            monkeypatch.setenv("HF_HOME", str(folder))
        elif where == "XDG":
            monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hub.download("Tiny-Test", progress=False).is_file()
    assert [r for r in fake.requests if r.server == "hub"][-1].headers["Authorization"] == "Bearer hf_secret"


def test_a_token_that_cannot_be_one_is_refused_by_name(fake, tiny, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_se cret")
    with pytest.raises(DownloadError, match="token in \\$HF_TOKEN holds spaces, control or non-ASCII"):
        hub.download("Tiny-Test", progress=False)
    monkeypatch.setenv("HF_TOKEN", " \n")  # only whitespace: no token, as the hub's client reads it
    fake.token = "hf_secret"
    with pytest.raises(DownloadError, match="HTTP 401.*set \\$HF_TOKEN"):
        hub.download("Tiny-Test", progress=False)


@pytest.mark.parametrize("var", ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"])
def test_download_command_honours_offline_mode(fake, tiny, monkeypatch, capsys, tmp_path, var):
    monkeypatch.setenv(var, "1")
    assert main(["download", "Tiny-Test", "--quiet"]) == 1
    assert "Tiny-Test is not downloaded and downloading is off" in capsys.readouterr().err
    assert main(["download", HF_REPO, "--quiet"]) == 1
    with pytest.raises(DownloadError, match="HF_HUB_OFFLINE is set"):
        hub.download_file(OC_REPO, WEIGHTS, tmp_path / "direct")
    assert fake.requests == [] and not (tmp_path / "home").exists()
    monkeypatch.delenv(var)
    assert main(["download", "Tiny-Test", "--quiet"]) == 0
    before = len(fake.requests)
    monkeypatch.setenv(var, "1")
    assert main(["download", "Tiny-Test", "--quiet"]) == 0  # on disk: offline is no obstacle
    assert len(fake.requests) == before


def test_an_answer_without_x_repo_commit_is_not_the_hub(fake, tiny, tmp_path):
    fake.no_commit = True  # e.g. a captive portal answering 200 with its login page
    with pytest.raises(DownloadError, match="lacks the hub's X-Repo-Commit header.*nothing was saved"):
        hub.download("Tiny-Test", progress=False)
    with pytest.raises(DownloadError, match="X-Repo-Commit"):
        hub.download(HF_REPO, progress=False)
    assert fake.gets(WEIGHTS) == [] and fake.gets(CONFIG, server="hub") == []
    assert not (tmp_path / "home").exists() or list((tmp_path / "home").iterdir()) == []


def test_failed_downloads_leave_no_empty_folder(fake, monkeypatch, tmp_path):
    for repo, status in (("tests/gone", None), (OC_REPO, (403, "GatedRepo")), (OC_REPO, (404, "EntryNotFound"))):
        info = make_info("Fails-Test", repo=repo)
        monkeypatch.setitem(registry.models(), info.name, info)
        if status:
            fake.status[OC_REPO, None] = status
        with pytest.raises(DownloadError):
            hub.download(info.name, progress=False)
        assert not model_dir(tmp_path, repo).exists(), (repo, status)
    # an interrupted one keeps its folder: the .part file in it resumes
    fake.status.clear()
    fake.misbehave[OC_REPO, WEIGHTS] = Misbehaviour(cut_after=1000)
    with pytest.raises(DownloadError, match="interrupted"):
        hub.download("Fails-Test", retries=0, progress=False)
    assert (model_dir(tmp_path) / (WEIGHTS + ".part")).stat().st_size == 1000


def test_open_clip_files_under_the_conversion_bots_name(fake, tmp_path, checkpoint):
    repo, name = "tests/bot-converted", "open_clip_pytorch_model.safetensors"
    fake.add_file(repo, name, fake.files[OC_REPO, WEIGHTS])
    fake.add_file(repo, CONFIG, fake.files[OC_REPO, CONFIG])
    fake.add_file(repo, "open_clip_pytorch_model.bin", b"pickle: never fetched")
    model, _ = miniclip.load(repo)
    assert model.config == ARCHS["odd_oc"].config
    assert sorted(p.name for p in model_dir(tmp_path, repo).iterdir()) == [CONFIG, name]
    assert find_weights_file(model_dir(tmp_path, repo)).name == name  # a folder holding it loads too
    assert hub.local_weights(repo) == model_dir(tmp_path, repo) / name
    with pytest.raises(registry.MiniclipError, match="open_clip layout's files are open_clip_model.safetensors or "
                                                     "open_clip_pytorch_model.safetensors and open_clip_config.json"):
        registry._parse("x", {"repo": "a/b", "layout": "open_clip", "weights_file": "model.safetensors",
                              "config_file": CONFIG, "activation": "gelu", "image_size": 224, "size_bytes": 1,
                              "size_exact": False, "license": "MIT"})


# ---------------------------------------------------------------------------------------------------
# Hostile servers (issue 15, items 3 and 7)


def test_endless_body_is_cut_off_at_the_announced_size(fake, tiny, tmp_path, monkeypatch):
    size = len(fake.files[OC_REPO, WEIGHTS])
    fake.misbehave[OC_REPO, WEIGHTS] = Misbehaviour(endless=True)  # no Content-Length, bytes without end
    largest = []
    real_open = hub._open_for_writing

    class Measured:
        def __init__(self, f):
            self.f, self.written = f, 0

        def write(self, data):
            self.written += len(data)
            largest.append(self.written)
            return self.f.write(data)

        def close(self):
            self.f.close()

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(hub, "_open_for_writing", lambda path, mode: Measured(real_open(path, mode)))
    with pytest.raises(DownloadError, match=f"the server sent more than the {size} bytes announced"):
        hub.download("Tiny-Test", progress=False)
    assert max(largest) <= size  # not a byte past the size was written
    assert not (model_dir(tmp_path) / (WEIGHTS + ".part")).exists() and not (model_dir(tmp_path) / WEIGHTS).exists()


def test_a_trickling_server_meets_the_deadline(fake, tiny, tmp_path, capsys):
    fake.misbehave[OC_REPO, WEIGHTS] = Misbehaviour(trickle_seconds=0.05, times=2)  # never silent for a timeout
    with pytest.raises(DownloadError, match="did not finish within its deadline of 1 s.*kept in .*part"):
        hub.download("Tiny-Test", timeout=5, deadline=1, retries=0, progress=False)
    kept = (model_dir(tmp_path) / (WEIGHTS + ".part")).stat().st_size
    assert 0 < kept < 1000  # kept to resume
    assert main(["download", "Tiny-Test", "--quiet", "--deadline", "0.5", "--timeout", "5"]) == 1
    assert "deadline of 0.5 s" in capsys.readouterr().err
    assert fake.gets(WEIGHTS)[-1].headers["Range"] == f"bytes={kept}-"  # the second run resumed
    assert hub.download("Tiny-Test", progress=False).is_file()  # the server behaves again: done


def test_a_symlink_at_the_partial_download_is_not_written_through(fake, tiny, tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    model_dir(tmp_path).mkdir(parents=True)
    (model_dir(tmp_path) / (WEIGHTS + ".part")).symlink_to(victim)
    with pytest.raises(DownloadError, match="is a symbolic link, not a partial download"):
        hub.download("Tiny-Test", progress=False)
    assert victim.read_text() == "precious"


@pytest.mark.parametrize("target", ["file:///etc/passwd", "data:,not-a-model", "ftp://127.0.0.1/x"])
def test_redirects_to_anything_but_http_are_refused(fake, tiny, tmp_path, target):
    fake.redirect[OC_REPO, WEIGHTS] = target  # the hub's answer
    with pytest.raises(DownloadError, match="only http\\(s\\) URLs are followed"):
        hub.download("Tiny-Test", progress=False)
    fake.redirect.clear()
    fake.cdn_redirect = target  # the file server's answer
    with pytest.raises(DownloadError, match="only http\\(s\\) URLs are followed"):
        hub.download("Tiny-Test", progress=False)
    assert not (model_dir(tmp_path) / WEIGHTS).exists()
    assert not (model_dir(tmp_path) / (WEIGHTS + ".part")).exists()


def test_the_opener_has_no_handlers_for_local_schemes(tmp_path, monkeypatch):
    secret = tmp_path / "secret"
    secret.write_text("local file")
    for url in (secret.as_uri(), "data:,x", "ftp://127.0.0.1/x"):
        with pytest.raises(urllib.error.URLError, match="unknown url type"):
            hub._OPENER.open(url, timeout=1)
    monkeypatch.setenv("HF_ENDPOINT", tmp_path.as_uri())
    with pytest.raises(DownloadError, match="reached over http\\(s\\) only"):
        hub.download("tests/x", progress=False)
