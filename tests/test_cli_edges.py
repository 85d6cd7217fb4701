"""The command line's edges (issue 13): random weights to try it offline, and every mistake a user makes
being one clear line with nothing changed on disk. Where the behaviour belongs to the process (exit
status, Ctrl-C, a closed pipe, how the package is found), the real entry point runs in a subprocess."""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from seeded import ARCHS, write_checkpoint

import miniclip
from miniclip.apps.explain import SCALE_HEIGHT, TITLE_HEIGHT, colorize
from miniclip.cli import CLI_ADVICE, build_parser, main
from miniclip.config import ARCHITECTURES
from miniclip.hub.random_weights import RANDOM_NOTE, is_random, random_params, to_transformers, write_random_weights
from miniclip.safetensors_file import read_metadata, read_safetensors
from miniclip.weights import from_transformers

REPO = Path(__file__).resolve().parent.parent
PILLOW_LIMIT = Image.MAX_IMAGE_PIXELS


def run(*args: str, cwd=None, env=None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "miniclip", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, **(env or {})}, timeout=300, **kwargs)


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("miniclip: error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def image(tmp_path) -> Path:
    path = tmp_path / "photo.png"
    Image.new("RGB", (96, 80), (200, 30, 30)).save(path)
    return path


@pytest.fixture
def weights(checkpoint) -> str:
    return str(checkpoint("odd_oc"))


# ---------------------------------------------------------------------------------------------------
# Random weights


def test_random_weights_are_the_seeded_test_weights_in_both_layouts(tmp_path):
    """One generator: the package's files hold exactly the tensors tests/seeded.py writes (whose mapping to
    transformers names is written independently), marked random; they load with the right config."""
    for name in ("odd_hf", "odd_oc"):
        arch = ARCHS[name]
        for layout in ("open_clip", "transformers"):
            ours = write_random_weights(arch.config, tmp_path / f"{name}-{layout}", layout, seed=arch.seed)
            theirs = write_checkpoint(arch, tmp_path / f"{name}-{layout}-test", layout)
            a, b = read_safetensors(ours), read_safetensors(theirs)
            assert a.keys() == b.keys()
            for key in a:
                assert a[key].shape == b[key].shape and np.array_equal(a[key], b[key]), key
            assert is_random(ours) and not is_random(theirs)
            with pytest.warns(UserWarning, match=RANDOM_NOTE):
                model, _ = miniclip.load(ours.parent)
            assert model.config == arch.config


def test_to_transformers_is_the_inverse_of_the_loader():
    cfg = ARCHS["odd_hf"].config
    params = random_params(cfg, seed=3)
    back = from_transformers(to_transformers(params, cfg), "round trip")
    assert back.keys() == params.keys() and all(np.array_equal(back[k], params[k]) for k in params)


def test_random_weights_command_refuses_to_overwrite(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(ARCHITECTURES, "tiny", ARCHS["odd_oc"].config)  # a registered architecture, small
    out = tmp_path / "w"
    assert main(["random-weights", "tiny", str(out), "--seed", "8"]) == 0
    before = (out / "open_clip_model.safetensors").read_bytes()
    assert read_metadata(out / "open_clip_model.safetensors")["miniclip.random_weights"] == "8"
    capsys.readouterr()
    assert main(["random-weights", "tiny", str(out), "--seed", "9"]) == 1
    assert "exists" in one_error_line(capsys.readouterr().err)
    assert (out / "open_clip_model.safetensors").read_bytes() == before


def test_random_weights_of_a_published_architecture_end_to_end(tmp_path):
    """The command as a newcomer runs it: ViT-B-32's shapes in the transformers layout, with its config."""
    out = tmp_path / "random-vit-b-32"
    result = run("random-weights", "ViT-B-32", str(out), "--layout", "transformers")
    assert result.returncode == 0, result.stderr
    assert result.stderr.count(RANDOM_NOTE) == 1 and "--weights" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    with pytest.warns(UserWarning, match=RANDOM_NOTE):
        model, _ = miniclip.load(out)
    assert model.config == ARCHITECTURES["ViT-B-32"]


def test_the_random_note_is_printed_once_per_command(tmp_path, image):
    write_random_weights(ARCHS["odd_oc"].config, tmp_path / "w")
    result = run("classify", str(image), str(image), "--labels", "a", "b", "--weights", str(tmp_path / "w"),
                 "--batch-size", "1")
    assert result.returncode == 0, result.stderr
    assert result.stderr == f"miniclip: warning: {RANDOM_NOTE}\n"
    # seeded test weights written without the mark say nothing
    assert "random" not in run("classify", str(image), "--labels", "a", "--weights",
                               str(write_checkpoint(ARCHS["odd_oc"], tmp_path / "plain").parent)).stderr


def test_a_converted_copy_of_random_weights_stays_marked(tmp_path, capsys):
    write_random_weights(ARCHS["odd_oc"].config, tmp_path / "w")
    assert main(["convert", str(tmp_path / "w"), str(tmp_path / "half")]) == 0
    assert capsys.readouterr().err.count(RANDOM_NOTE) == 1
    assert is_random(tmp_path / "half" / "open_clip_model.safetensors")


def test_random_weights_are_pointed_to_where_a_newcomer_looks(monkeypatch, capsys, image):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(miniclip.DownloadError, match="miniclip random-weights"):
        miniclip.load("ViT-B-32")
    monkeypatch.delenv("MINICLIP_WEIGHTS", raising=False)
    assert main(["classify", str(image), "--labels", "a"]) == 1
    err = one_error_line(capsys.readouterr().err)
    assert "random-weights" in err and "weights/README" not in err
    for doc in ("README.md", "weights/README.md", "docs/tutorial.md"):
        assert "miniclip random-weights ViT-B-32" in (REPO / doc).read_text(encoding="utf-8"), doc


# ---------------------------------------------------------------------------------------------------
# Ctrl-C and closed pipes: the process's own behaviour


def _reader_attached(fifo: Path) -> int | None:
    """A write end of `fifo` once a reader has opened it (O_NONBLOCK fails with ENXIO until then)."""
    try:
        return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as e:
        if e.errno != errno.ENXIO:
            raise
        return None


# The real `python -m miniclip`, except that reading the image at $MINICLIP_TEST_FIFO blocks on that FIFO, as a
# slow disk or network share would (miniclip itself refuses to open FIFOs, so the block is put in front of it).
_BLOCKING_IMAGE = """
import os, runpy, sys
import miniclip.preprocess as preprocess

_load_image = preprocess.load_image


def load_image(path, *args, **kwargs):
    if os.fspath(path) == os.environ["MINICLIP_TEST_FIFO"]:
        with open(path, "rb") as f:
            f.read()  # blocks until the test presses Ctrl-C
        raise AssertionError("not interrupted")
    return _load_image(path, *args, **kwargs)


preprocess.load_image = load_image  # before the commands import it
sys.argv[0] = "miniclip"
runpy.run_module("miniclip", run_name="__main__", alter_sys=True)
"""


def interrupt_while_reading(fifo: Path, *args: str) -> subprocess.CompletedProcess:
    """Run a command that will read `fifo` as an image; once it is blocked reading it (so its work is under
    way: model loaded, outputs not yet written), press Ctrl-C."""
    os.mkfifo(fifo)
    proc = subprocess.Popen([sys.executable, "-c", _BLOCKING_IMAGE, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "MINICLIP_TEST_FIFO": str(fifo)})
    writer, deadline = None, time.monotonic() + 120
    try:
        while writer is None and proc.poll() is None and time.monotonic() < deadline:
            writer = _reader_attached(fifo)
            time.sleep(0.02)
        assert writer is not None, proc.communicate(timeout=30)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if writer is not None:
            os.close(writer)
        if proc.poll() is None:
            proc.kill()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def assert_interrupted(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 130, result.stderr
    assert result.stderr.strip() == "miniclip: interrupted", result.stderr


def test_ctrl_c_in_classify_and_embed(tmp_path, weights, image):
    slow = tmp_path / "slow.png"
    assert_interrupted(interrupt_while_reading(slow, "classify", str(image), str(slow), "--labels", "a",
                                               "--weights", weights))
    out = tmp_path / "features.npy"
    assert_interrupted(interrupt_while_reading(tmp_path / "slow2.png", "embed", "--images", str(image),
                                               str(tmp_path / "slow2.png"), "--out", str(out), "--weights", weights))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photo.png", "slow.png", "slow2.png"]  # nothing written


def test_ctrl_c_in_explain_and_search(tmp_path, weights, image):
    out = tmp_path / "explain.png"
    assert_interrupted(interrupt_while_reading(tmp_path / "slow.png", "explain", str(tmp_path / "slow.png"),
                                               "--text", "a dog", "--out", str(out), "--weights", weights))
    assert not out.exists()
    photos = tmp_path / "photos"
    photos.mkdir()
    image.rename(photos / "a.png")
    assert main(["index", str(photos), "--out", str(tmp_path / "idx"), "--weights", weights]) == 0
    assert_interrupted(interrupt_while_reading(tmp_path / "q.png", "search", str(tmp_path / "idx"), "--image",
                                               str(tmp_path / "q.png"), "--html", str(tmp_path / "r.html"),
                                               "--weights", weights))
    assert not (tmp_path / "r.html").exists()


def test_ctrl_c_in_download(tmp_path):
    """A hub that accepts the connection and never answers: Ctrl-C while waiting for it."""
    server = socket.create_server(("127.0.0.1", 0))
    accepted, held = threading.Event(), []

    def accept():
        try:
            held.append(server.accept()[0])
            accepted.set()
        except OSError:
            pass

    threading.Thread(target=accept, daemon=True).start()
    env = {**os.environ, "HF_ENDPOINT": f"http://127.0.0.1:{server.getsockname()[1]}",
           "MINICLIP_HOME": str(tmp_path / "home")}
    proc = subprocess.Popen([sys.executable, "-m", "miniclip", "download", "someone/clip", "--quiet"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert accepted.wait(120), proc.communicate(timeout=30)
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        server.close()
        for conn in held:
            conn.close()
        if proc.poll() is None:
            proc.kill()
    assert_interrupted(subprocess.CompletedProcess(proc.args, proc.returncode, "", err))
    assert not [p for p in (tmp_path / "home").rglob("*") if p.is_file() and p.suffix == ".safetensors"]


def test_ctrl_c_in_index_before_anything_is_saved_leaves_no_folder(tmp_path, weights, image):
    photos = tmp_path / "photos"
    photos.mkdir()
    image.rename(photos / "a.png")
    out = tmp_path / "photos.index"
    result = interrupt_while_reading(photos / "b.png", "index", str(photos), "--out", str(out), "--weights", weights)
    assert result.returncode == 130 and "Traceback" not in result.stderr, result.stderr
    assert not out.exists()


@pytest.mark.parametrize("command", ["models", "trace"])
def test_a_closed_pipe_ends_quietly(command, weights):
    """`miniclip trace ... | head -1`: the reader is gone before the command writes; no error message."""
    args = ["models"] if command == "models" else ["trace", "--text", "a dog", "--weights", weights]
    read, write = os.pipe()
    os.close(read)
    try:
        result = subprocess.run([sys.executable, "-m", "miniclip", *args], stdout=write, stderr=subprocess.PIPE,
                                text=True, timeout=120)
    finally:
        os.close(write)
    assert result.returncode == 141 and result.stderr == "", result.stderr


# ---------------------------------------------------------------------------------------------------
# Mistakes: one line, exit status 1, nothing changed


def test_explain_out_is_checked_before_any_work(tmp_path, weights, image, capsys):
    original = image.read_bytes()
    for out, expected in [(tmp_path / "e.txt", "must end in .png"), (tmp_path, "is a folder"),
                          (tmp_path / "e", "must end in .png"), (tmp_path / "missing" / "e.png", "does not exist"),
                          (image, "is the input image")]:
        assert main(["explain", str(image), "--text", "a dog", "--out", str(out), "--weights", weights]) == 1, out
        assert expected in one_error_line(capsys.readouterr().err), out
    assert image.read_bytes() == original
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photo.png"]
    assert main(["explain", str(image), "--text", "a dog", "--out", str(tmp_path / "e.jpg"), "--weights", weights]) == 0
    assert Image.open(tmp_path / "e.jpg").format == "JPEG"


def test_explain_picture_has_titles_and_colour_scales(tmp_path, weights, image):
    out = tmp_path / "e.png"
    assert main(["explain", str(image), "--text", "a red square", "--out", str(out), "--weights", weights]) == 0
    picture = np.asarray(Image.open(out).convert("RGB"))
    S = 80
    assert picture.shape == (TITLE_HEIGHT + S + SCALE_HEIGHT, 3 * S + 20, 3)
    for i in range(3):  # every panel has a title: dark pixels in the strip above it
        assert (picture[:TITLE_HEIGHT, i * (S + 10):i * (S + 10) + S] < 100).any(), i
    expected = colorize(np.linspace(0, 1, S))
    for i in (1, 2):  # the two heat maps have the colour scale beneath, and its end values printed
        x = i * (S + 10)
        np.testing.assert_array_equal(picture[TITLE_HEIGHT + S + 6, x:x + S], expected)
        assert (picture[TITLE_HEIGHT + S + 14:, x:x + S] < 100).any()
    assert not (picture[TITLE_HEIGHT + S + 4:TITLE_HEIGHT + S + 12, :S] != 255).any()  # none under the photo


def test_weights_typo_suggests_the_close_names(image, capsys):
    assert main(["classify", str(image), "--labels", "a", "--weights", "ViT-B-33"]) == 1
    err = one_error_line(capsys.readouterr().err)
    assert "ViT-B-32" in err and "miniclip models" in err and "Errno" not in err
    assert main(["verify", "--weights", "vit-l-41"]) == 1
    assert "miniclip models" in one_error_line(capsys.readouterr().err)


def test_a_folder_given_as_an_image(tmp_path, weights, capsys):
    assert main(["classify", str(tmp_path), "--labels", "a", "--weights", weights]) == 1
    err = one_error_line(capsys.readouterr().err)
    assert "is a folder, not an image" in err and "Errno" not in err


def test_classify_top_and_labels_are_checked(weights, image, tmp_path, capsys):
    for top in ("0", "-3"):
        assert main(["classify", str(image), "--labels", "a", "b", "--top", top, "--weights", weights]) == 1
        assert "--top must be at least 1" in one_error_line(capsys.readouterr().err)
    assert main(["classify", str(image), "--labels", "a dog", "", "--weights", weights]) == 1
    assert "label 2 is empty" in one_error_line(capsys.readouterr().err)


def test_labels_file_gives_the_same_table_as_labels(weights, image, tmp_path, capsys):
    labels = ["a red square", "a green circle", "犬の写真"]
    (tmp_path / "labels.txt").write_text("\n".join(labels) + "\n\n", encoding="utf-8")
    assert main(["classify", str(image), "--labels", *labels, "--weights", weights]) == 0
    direct = capsys.readouterr().out
    assert main(["classify", str(image), "--labels-file", str(tmp_path / "labels.txt"), "--weights", weights]) == 0
    assert capsys.readouterr().out == direct and len(direct.splitlines()) == 4
    (tmp_path / "empty.txt").write_text("\n \n", encoding="utf-8")
    assert main(["classify", str(image), "--labels-file", str(tmp_path / "empty.txt"), "--weights", weights]) == 1
    assert "no labels" in one_error_line(capsys.readouterr().err)
    assert main(["classify", str(image), "--labels-file", str(tmp_path / "nope.txt"), "--weights", weights]) == 1
    err = one_error_line(capsys.readouterr().err)
    assert err.endswith(f"error: {tmp_path / 'nope.txt'}: No such file or directory")
    assert main(["classify", str(image), "--labels", "a", "--labels-file", str(tmp_path / "labels.txt"),
                 "--weights", weights]) == 1
    assert "not --labels and --labels-file" in one_error_line(capsys.readouterr().err)


@pytest.fixture
def index(tmp_path, weights, image) -> Path:
    photos = tmp_path / "photos"
    photos.mkdir()
    image.rename(photos / "red.png")
    Image.new("RGB", (90, 90), (20, 20, 220)).save(photos / "blue.png")
    assert main(["index", str(photos), "--out", str(tmp_path / "photos.index"), "--weights", weights]) == 0
    return tmp_path / "photos.index"


def test_search_needs_a_query(index, weights, capsys):
    capsys.readouterr()
    assert main(["search", str(index), "--weights", weights]) == 1
    err = one_error_line(capsys.readouterr().err)
    assert "give what to look for" in err and "not both" not in err


def test_search_without_weights_uses_the_index_weights(index, monkeypatch, capsys, tmp_path):
    monkeypatch.delenv("MINICLIP_WEIGHTS", raising=False)
    monkeypatch.chdir(tmp_path / "photos")  # the recorded path works from anywhere
    capsys.readouterr()
    assert main(["search", str(index), "a red square", "--top", "1"]) == 0
    captured = capsys.readouterr()
    assert "using the weights the index was built with" in captured.err and len(captured.out.splitlines()) == 1


def test_search_outputs_are_checked_and_missing_results_flagged(index, weights, tmp_path, capsys):
    capsys.readouterr()
    missing = tmp_path / "missing" / "dir" / "page.html"
    assert main(["search", str(index), "a dog", "--html", str(missing), "--weights", weights]) == 1
    assert "does not exist" in one_error_line(capsys.readouterr().err) and not (tmp_path / "missing").exists()
    assert main(["search", str(index), "a dog", "--sheet", str(tmp_path / "out.txt"), "--weights", weights]) == 1
    assert "must end in .png" in one_error_line(capsys.readouterr().err) and not (tmp_path / "out.txt").exists()
    (tmp_path / "photos" / "blue.png").unlink()
    assert main(["search", str(index), "a dog", "--weights", weights]) == 0
    captured = capsys.readouterr()
    assert [line.endswith("(no longer exists)") for line in captured.out.splitlines()].count(True) == 1
    assert "1 of these images no longer exists" in captured.err


def test_embed_out_must_be_npy_in_an_existing_folder(tmp_path, weights, capsys):
    for out, expected in [("feats", "must end in .npy"), (str(tmp_path / "no" / "f.npy"), "does not exist")]:
        assert main(["embed", "--texts", "a dog", "--out", out, "--weights", weights]) == 1
        assert expected in one_error_line(capsys.readouterr().err)
    assert not Path("feats.npy").exists() and not (tmp_path / "no").exists()
    assert main(["embed", "--texts", "a dog", "--out", str(tmp_path / "f.npy"), "--weights", weights]) == 0
    assert capsys.readouterr().out.endswith(f"to {tmp_path / 'f.npy'}\n")


def test_convert_does_not_overwrite_without_force(tmp_path, weights, capsys):
    assert main(["convert", weights, str(tmp_path / "half")]) == 0
    target = tmp_path / "half" / "open_clip_model.safetensors"
    before = target.stat().st_mtime_ns
    capsys.readouterr()
    assert main(["convert", weights, str(tmp_path / "half"), "--dtype", "bfloat16"]) == 1
    assert "--force" in one_error_line(capsys.readouterr().err) and target.stat().st_mtime_ns == before
    assert main(["convert", weights, str(tmp_path / "half"), "--dtype", "bfloat16", "--force"]) == 0


def test_advice_names_the_options_of_the_command_line(tmp_path, weights, image, capsys, checkpoint):
    """Each library message CLI_ADVICE rewrites really says that (so the table cannot go stale), and the
    command line says the option instead."""
    long_text = " ".join(["word"] * 60)  # more than odd_oc's 40-token context
    assert main(["classify", str(image), "--labels", long_text, "--weights", weights]) == 1
    err = one_error_line(capsys.readouterr().err)
    assert "pass --truncate" in err and "truncate=True" not in err
    assert main(["classify", str(image), "--labels", long_text, "--truncate", "--weights", weights]) == 0
    capsys.readouterr()

    assert main(["classify", str(image), "--labels", "a", "--max-pixels", "1000", "--weights", weights]) == 1
    err = one_error_line(capsys.readouterr().err)
    assert "--max-pixels N" in err and "pass max_pixels" not in err
    os.environ["MINICLIP_MAX_PIXELS"] = "1000"
    try:
        assert main(["classify", str(image), "--labels", "a", "--weights", weights]) == 1
        assert "--max-pixels" in one_error_line(capsys.readouterr().err)
        assert main(["classify", str(image), "--labels", "a", "--max-pixels", "100000", "--weights", weights]) == 0
    finally:
        del os.environ["MINICLIP_MAX_PIXELS"]
    assert Image.MAX_IMAGE_PIXELS == PILLOW_LIMIT  # Pillow's own limit again: the option lasts one run
    capsys.readouterr()

    bare = checkpoint("odd_oc", with_config=False)
    assert main(["classify", str(image), "--labels", "a", "--weights", str(bare)]) == 0
    err = capsys.readouterr().err
    assert "pass --activation gelu" in err and "activation='gelu'" not in err
    stated = checkpoint("odd_hf")  # its config.json states hidden_act: asking for the other one contradicts it
    other = "gelu" if ARCHS["odd_hf"].config.activation == "quick_gelu" else "quick_gelu"
    assert main(["classify", str(image), "--labels", "a", "--activation", other, "--weights", str(stated)]) == 1
    err = one_error_line(capsys.readouterr().err)
    assert "drop --activation" in err

    # the library's own wording, which the table above translates
    with pytest.raises(miniclip.TokenizerError, match="pass truncate=True"):
        miniclip.tokenize([long_text], context_length=40)
    with pytest.raises(miniclip.ImageError, match="pass max_pixels to change the limit"):
        miniclip.preprocess.load_image(image, max_pixels=1000)
    with pytest.warns(UserWarning, match="pass activation='gelu'"):
        miniclip.load(bare)
    with pytest.raises(miniclip.WeightsError, match="drop the argument to use the config's"):
        miniclip.load(stated, activation=other)
    assert len(CLI_ADVICE) == 4


def test_empty_batches_give_empty_embeddings(weights):
    model, _ = miniclip.load(weights)
    T, S, E = model.config.context_length, model.config.image_size, model.config.embed_dim
    for backend in ("numpy", "numba"):
        model, _ = miniclip.load(weights, backend=backend)
        for features in (model.encode_text(np.zeros((0, T), np.int64)),
                         model.encode_image(np.zeros((0, 3, S, S), np.float32))):
            assert features.shape == (0, E) and features.dtype == np.float32
    with pytest.raises(miniclip.InputError, match="batch is empty"):
        model.encode_text(np.zeros((0, T), np.int64), return_hidden=True)


# ---------------------------------------------------------------------------------------------------
# Help, version, installation, the tests' own home


def test_version_and_help_texts(capsys):
    result = run("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"miniclip {miniclip.__version__}"

    def helptext(*command: str) -> str:
        with pytest.raises(SystemExit):
            build_parser().parse_args([*command, "--help"])
        return " ".join(capsys.readouterr().out.split())

    embed = helptext("embed")
    assert "image files to embed" in embed and "texts to embed" in embed and "--batch-size" in embed
    assert "a model name (see `miniclip models`" in embed
    for single in ("explain", "trace", "search"):
        assert "--batch-size" not in helptext(single), single
    assert "--truncate" in helptext("classify") and "--truncate" in helptext("search")


def test_models_footnote_cites_open_clip_for_the_accuracy(capsys):
    assert main(["models"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "docs/openclip_results.csv in the open_clip repository" in out


def _strict_editable_install() -> bool:
    """setuptools' default editable install: a finder appended to sys.meta_path, which a folder named
    miniclip in the current directory shadows (the README installs with editable_mode=compat instead)."""
    return any(getattr(f, "__module__", "").startswith("__editable___miniclip") or
               type(f).__module__.startswith("__editable___miniclip") for f in sys.meta_path)


@pytest.mark.skipif(_strict_editable_install(),
                    reason="installed in setuptools' default editable mode, not as the README says "
                           "(pip install -e \".[test]\" --config-settings editable_mode=compat)")
def test_runs_from_the_folder_holding_a_clone_named_miniclip(tmp_path, weights):
    clone = tmp_path / "miniclip"  # what `git clone .../miniclip` leaves: a folder without __init__.py
    (clone / "docs").mkdir(parents=True)
    (clone / "README.md").write_text("# miniclip\n")
    assert run("--version", cwd=tmp_path).returncode == 0
    script = "import miniclip; print(miniclip.load, miniclip.__file__)"
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0 and str(clone) not in result.stdout, result.stderr


def test_the_tests_use_a_temporary_miniclip_home():
    home = Path(os.environ["MINICLIP_HOME"])
    assert home.is_dir() and Path.home() / ".cache" not in home.parents and "pytest" in str(home)
    assert miniclip.store.cache_dir().is_relative_to(home) and miniclip.store.weights_dir().is_relative_to(home)


def test_readme_install_is_what_ci_runs():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    install = 'pip install -e ".[test]" --config-settings editable_mode=compat'
    assert install in readme and f"python -m {install}" in ci
