"""`miniclip convert`: float16/bfloat16 copies of a checkpoint, in the same layout, that load and give
outputs close to the float32 references (the differences are recorded and printed at the end of the run;
docs/performance.md, "float16/bfloat16 storage", states them)."""

from __future__ import annotations

import json
import os
import struct
import threading

import numpy as np
import pytest
from conftest import FIXTURES, record
from safetensors.numpy import load_file, save_file
from seeded import ARCHS, seeded_images

import miniclip
from miniclip import store
from miniclip.cli import main
from miniclip.errors import MiniclipError, WeightsError
from miniclip.hub.convert import convert, float32_to_bfloat16_bits
from miniclip.safetensors_file import read_header, read_safetensors
from miniclip.store import file_lock

FILES = {"open_clip": ("open_clip_model.safetensors", "open_clip_config.json"),
         "transformers": ("model.safetensors", "config.json")}
# Observed on the odd-sized seeded models (attention made deliberately sharp, which amplifies rounding):
# float16 ~1e-3 relative / 0.03 logits, bfloat16 ~1e-2 / 0.4. The bounds leave room, and still catch a
# wrong dtype or a mangled tensor, which are off by orders of magnitude more.
BOUNDS = {"float16": (5e-3, 0.1), "bfloat16": (5e-2, 1.5)}


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    return float((np.linalg.norm(actual - expected, axis=-1) / np.linalg.norm(expected, axis=-1)).max())


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("name", ["odd_oc", "odd_hf"])
def test_converted_checkpoint_is_half_the_size_and_loads(name, dtype, checkpoint, tmp_path, capsys):
    src, layout = checkpoint(name), ARCHS[name].layout
    weights, config = FILES[layout]
    assert main(["convert", str(src), str(tmp_path / "out"), "--dtype", dtype]) == 0
    assert f"in {dtype}" in capsys.readouterr().out
    out = tmp_path / "out" / weights
    assert out.stat().st_size < 0.501 * (src / weights).stat().st_size
    header, _, _ = read_header(out)
    assert {info["dtype"] for info in header.values()} == {"F16" if dtype == "float16" else "BF16"}
    assert set(header) == set(read_header(src / weights)[0])  # same names: same layout
    copied = json.loads((tmp_path / "out" / config).read_text())
    assert copied == json.loads((src / config).read_text())

    model, _ = miniclip.load(tmp_path / "out")
    assert model.config == ARCHS[name].config
    ref = np.load(FIXTURES / f"model_{name}.npz")
    images, tokens = seeded_images(ARCHS[name]), ref["tokens"].astype(np.int64)
    logits, _ = model(images, tokens)
    errors = {"image_features (rel)": relative_error(model.encode_image(images), ref["image_features"]),
              "text_features (rel)": relative_error(model.encode_text(tokens), ref["text_features"]),
              "logits_per_image (abs)": float(np.abs(logits - ref["logits_per_image"]).max())}
    embed_bound, logit_bound = BOUNDS[dtype]
    for quantity, value in errors.items():
        record(f"{name} stored as {dtype} / {quantity}", value)
        assert value <= (logit_bound if "logits" in quantity else embed_bound), (quantity, value)
    assert errors["logits_per_image (abs)"] > 1e-4  # the rounding is really there (not a float32 copy)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_stored_values_are_the_rounded_weights(dtype, checkpoint, params_cache, tmp_path):
    out = convert(checkpoint("odd_oc"), tmp_path, dtype)
    stored = read_safetensors(out)  # widened back to float32
    for name, original in params_cache("odd_oc").items():
        if dtype == "float16":
            expected = original.astype(np.float16).astype(np.float32)
        else:
            expected = (reference_bfloat16_bits(original).astype(np.uint32) << 16).view(np.float32)
        np.testing.assert_array_equal(stored[name], expected.reshape(original.shape), err_msg=name)


def reference_bfloat16_bits(x: np.ndarray) -> np.ndarray:
    """Round to nearest bfloat16, ties to even, the slow way: of the two bfloat16 neighbours of each finite
    value (its float32 bits truncated, and the next pattern up in magnitude), take the nearer, measured in
    float64 with an unbounded exponent (so that past the largest bfloat16 the upper neighbour is 2^128,
    which is infinity once encoded, as IEEE rounding has it)."""
    x = np.asarray(x, dtype=np.float32).reshape(-1)
    low = (x.view(np.uint32) >> 16).astype(np.int64)
    high = low + 1

    def value(bits: np.ndarray) -> np.ndarray:  # sign, 8-bit exponent, 7-bit mantissa, decoded by hand
        sign = np.where(bits & 0x8000, -1.0, 1.0)
        exponent, mantissa = (bits >> 7) & 0xFF, bits & 0x7F
        normal = (1 + mantissa / 128) * 2.0 ** (exponent - 127)
        return sign * np.where(exponent == 0, mantissa * 2.0**-133, normal)

    target = x.astype(np.float64)
    d_low, d_high = np.abs(value(low) - target), np.abs(value(high) - target)
    pick_high = np.isfinite(x) & ((d_high < d_low) | ((d_high == d_low) & (low % 2 == 1)))
    return np.where(pick_high, high, low).astype(np.uint16)


def test_bfloat16_rounding_is_to_nearest_even():
    one = 1.0
    special = np.array([
        0.0, -0.0, one, -one, 1e-45, -1e-45, 1e-40,  # zeros, subnormals
        one + 2**-8,  # exactly halfway between 1 and 1 + 2^-7: ties to the even one, 1
        one + 3 * 2**-8,  # halfway between 1 + 2^-7 (odd) and 1 + 2^-6 (even): up
        one + 2**-8 + 2**-20,  # just above halfway: up
        one + 2**-8 - 2**-20,  # just below: down
        3.3895313892515355e38,  # the largest bfloat16: kept
        np.finfo(np.float32).max,  # rounds past the largest bfloat16: infinity, as in PyTorch
        np.inf, -np.inf,
    ], dtype=np.float32)
    assert float32_to_bfloat16_bits(special).tolist() == reference_bfloat16_bits(special).tolist()
    assert float32_to_bfloat16_bits(np.array([one + 2**-8, one + 3 * 2**-8], np.float32)).tolist() == [0x3F80, 0x3F82]
    rng = np.random.RandomState(0)
    random = (rng.standard_normal(200_000) * np.exp(rng.uniform(-60, 60, 200_000))).astype(np.float32)
    np.testing.assert_array_equal(float32_to_bfloat16_bits(random), reference_bfloat16_bits(random))
    nan = float32_to_bfloat16_bits(np.array([np.nan, -np.nan, struct.unpack("<f", b"\xff\xff\xff\x7f")[0]],
                                            np.float32))
    assert np.isnan((nan.astype(np.uint32) << 16).view(np.float32)).all()


def test_float16_overflow_is_refused(tmp_path):
    src = tmp_path / "big.safetensors"
    save_file({"visual.x": np.array([1.0, 1e5], np.float32)}, str(src))
    with pytest.raises(MiniclipError, match="'visual.x' holds 1e\\+05, beyond the range of float16.*bfloat16"):
        convert(src, tmp_path / "out", "float16")
    assert not (tmp_path / "out" / "big.safetensors").exists()
    assert list((tmp_path / "out").iterdir()) == []  # no temporary file left either
    out = convert(src, tmp_path / "out", "bfloat16")
    assert read_safetensors(out)["visual.x"].tolist() == [1.0, 99840.0]  # 1e5 to 8 significant bits


def test_integer_tensors_and_metadata_are_kept(tmp_path):
    src = tmp_path / "model.safetensors"
    ids = np.arange(7, dtype=np.int64)[None]
    save_file({"vision_model.embeddings.position_ids": ids, "vision_model.w": np.ones((3, 5), np.float32)},
              str(src), metadata={"format": "pt", "origin": "test"})
    out = convert(src, tmp_path / "half.safetensors", "float16")
    header, _, _ = read_header(out)
    assert header["vision_model.embeddings.position_ids"]["dtype"] == "I64"
    assert header["vision_model.w"]["dtype"] == "F16"
    reread = load_file(str(out))  # the safetensors library itself reads the file
    np.testing.assert_array_equal(reread["vision_model.embeddings.position_ids"], ids)
    assert reread["vision_model.w"].dtype == np.float16
    n = int.from_bytes(out.read_bytes()[:8], "little")
    assert (8 + n) % 8 == 0  # data aligned
    assert json.loads(out.read_bytes()[8:8 + n])["__metadata__"] == {"format": "pt", "origin": "test"}


def test_transformers_config_records_the_new_dtype(checkpoint, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for f in checkpoint("odd_hf").iterdir():
        (src / f.name).write_bytes(f.read_bytes())
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps(config | {"torch_dtype": "float32"}))
    convert(src, tmp_path / "out", "bfloat16")
    assert json.loads((tmp_path / "out" / "config.json").read_text())["torch_dtype"] == "bfloat16"


def test_refuses_to_overwrite_the_source(checkpoint):
    with pytest.raises(WeightsError, match="the destination is the source"):
        convert(checkpoint("odd_oc"), checkpoint("odd_oc"), "float16")


# ---------------------------------------------------------------------------------------------------
# Writing safely (issue 15, item 2)


def test_an_existing_output_is_replaced_only_when_asked(checkpoint, tmp_path, capsys):
    src, out = checkpoint("odd_oc"), tmp_path / "out"
    first = convert(src, out, "float16")
    before = first.read_bytes()
    with pytest.raises(WeightsError, match="already exist.*pass --force"):
        convert(src, out, "bfloat16")
    assert first.read_bytes() == before  # untouched
    assert main(["convert", str(src), str(out), "--dtype", "bfloat16"]) == 1
    assert "already exist" in capsys.readouterr().err
    assert main(["convert", str(src), str(out), "--dtype", "bfloat16", "--force"]) == 0
    header, _, _ = read_header(first)
    assert {info["dtype"] for info in header.values()} == {"BF16"}
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES["open_clip"])  # no temporary or lock file left


def test_a_second_convert_into_the_same_output_is_refused(checkpoint, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with file_lock(out / ".open_clip_model.safetensors.lock", wait=False):  # as a running convert holds it
        with pytest.raises(MiniclipError, match=r"another convert \(process \d+\) is writing"):
            convert(checkpoint("odd_oc"), out, "float16")
    assert list(out.iterdir()) == []


def test_concurrent_converts_never_mix_their_bytes(checkpoint, params_cache, tmp_path):
    """float16 and bfloat16 converts racing into one output (3 times in 12 a BF16 header over float16 bytes
    before the fix): each either finishes or is refused, and the file left is one of them, whole."""
    for attempt in range(4):
        out, results = tmp_path / f"race{attempt}", {}

        def run(dtype, out=out, results=results):
            try:
                results[dtype] = convert(checkpoint("odd_oc"), out, dtype)
            except MiniclipError as e:
                results[dtype] = e

        threads = [threading.Thread(target=run, args=(dtype,)) for dtype in ("float16", "bfloat16")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        done = [dtype for dtype, r in results.items() if not isinstance(r, Exception)]
        assert len(done) == 1, results  # the other was refused: locked, or the output already there
        header, _, _ = read_header(out / "open_clip_model.safetensors")
        assert {info["dtype"] for info in header.values()} == {"F16" if done[0] == "float16" else "BF16"}
        stored = read_safetensors(out / "open_clip_model.safetensors")
        original = params_cache("odd_oc")["visual.proj"]
        if done[0] == "float16":
            expected = original.astype(np.float16).astype(np.float32)
        else:
            expected = (reference_bfloat16_bits(original).astype(np.uint32) << 16).view(np.float32)
        expected = expected.reshape(original.shape)
        np.testing.assert_array_equal(stored["visual.proj"], expected)


def test_a_symlink_planted_at_the_temporary_name_is_not_followed(checkpoint, tmp_path, monkeypatch):
    out, victim = tmp_path / "out", tmp_path / "victim"
    out.mkdir()
    victim.write_text("precious")
    monkeypatch.setattr(store.secrets, "token_hex", lambda n: "ab" * n)  # make the random name predictable
    planted = out / f".open_clip_model.safetensors.{os.getpid()}.{'ab' * 8}.tmp"
    planted.symlink_to(victim)
    with pytest.raises(FileExistsError):
        convert(checkpoint("odd_oc"), out, "float16")
    assert victim.read_text() == "precious" and planted.is_symlink()
    assert not (out / "open_clip_model.safetensors").exists()
    monkeypatch.undo()  # a fresh random name: fine
    assert convert(checkpoint("odd_oc"), out, "float16").is_file() and victim.read_text() == "precious"
