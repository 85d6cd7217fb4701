"""Loading: both layouts, config files, dtypes, and a clear error for every kind of bad file."""

from __future__ import annotations

import json
import struct
import warnings

import numpy as np
import pytest
from safetensors.numpy import save_file
from seeded import ARCHS, seeded_images, to_open_clip, to_transformers, write_checkpoint

import miniclip
from miniclip import WeightsError
from miniclip.safetensors_file import read_safetensors

ODD = ARCHS["odd_oc"]


def write_raw_safetensors(path, entries: dict[str, tuple[str, list[int], bytes]]) -> None:
    """A safetensors file written by hand, for dtypes NumPy cannot save (bfloat16) and for corruption."""
    header, offset, blobs = {}, 0, []
    for name, (dtype, shape, blob) in entries.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)  # pad to 8 bytes as the reference writer does
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"".join(blobs))


def outputs(model, arch=ODD):
    tokens = miniclip.tokenize(["a diagram", "a dog"], context_length=arch.config.context_length)
    return model.encode_image(seeded_images(arch)), model.encode_text(tokens)


# --- what loads -------------------------------------------------------------------------------------

def test_file_and_directory_give_the_same_model(checkpoint):
    directory = checkpoint("odd_oc")
    from_dir, _ = miniclip.load(directory)
    from_file, _ = miniclip.load(directory / "open_clip_model.safetensors")
    assert from_dir.config == from_file.config == ODD.config
    for a, b in zip(outputs(from_dir), outputs(from_file), strict=True):
        np.testing.assert_array_equal(a, b)


def test_both_layouts_give_identical_outputs(checkpoint):
    """Same weights, two layouts: identical up to float32 rounding (the projections are stored transposed
    in one layout, so BLAS takes a different code path and rounds differently)."""
    hf, _ = miniclip.load(checkpoint("odd_oc", "transformers"))
    oc, _ = miniclip.load(checkpoint("odd_oc", "open_clip"))
    assert hf.config == oc.config
    for a, b in zip(outputs(hf), outputs(oc), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", ["F16", "BF16"])
def test_half_precision_checkpoints_load_as_float32(tmp_path, params_cache, dtype):
    """A float16/bfloat16 file gives exactly the model of its values widened to float32."""
    params = params_cache("odd_oc")
    stored = {n: np.array(t, order="C") for n, t in to_open_clip(params).items()}
    if dtype == "F16":
        rounded = {n: t.astype(np.float16) for n, t in stored.items()}
        save_file(rounded, str(tmp_path / "open_clip_model.safetensors"))
        widened = {n: t.astype(np.float32) for n, t in rounded.items()}
    else:  # bfloat16: the high 16 bits of each float32 (truncation), written by hand
        high = {n: (t.view(np.uint32) >> 16).astype("<u2") for n, t in stored.items()}
        write_raw_safetensors(tmp_path / "open_clip_model.safetensors",
                              {n: ("BF16", list(t.shape), t.tobytes()) for n, t in high.items()})
        widened = {n: (t.astype(np.uint32) << 16).view(np.float32) for n, t in high.items()}
    half, _ = miniclip.load(tmp_path / "open_clip_model.safetensors", activation="gelu")
    write_checkpoint(ODD, tmp_path / "f32", params=widened, with_config=False)
    full, _ = miniclip.load(tmp_path / "f32", activation="gelu")
    for a, b in zip(outputs(half), outputs(full), strict=True):
        np.testing.assert_array_equal(a, b)
    assert all(t.dtype == np.float32 for t in read_safetensors(tmp_path / "open_clip_model.safetensors").values())


def test_float32_tensors_are_not_copied(checkpoint):
    """Loading maps float32 tensors in place (no second copy of the weights in memory)."""
    tensors = read_safetensors(checkpoint("odd_oc") / "open_clip_model.safetensors")
    t = tensors["visual.transformer.resblocks.0.mlp.c_fc.weight"]
    assert not t.flags.owndata and not t.flags.writeable


def test_bare_file_without_activation_warns_and_assumes_quick_gelu(checkpoint):
    file = checkpoint("odd_oc", with_config=False) / "open_clip_model.safetensors"
    with pytest.warns(UserWarning, match="assuming activation='quick_gelu'"):
        model, _ = miniclip.load(file)
    assert model.config.activation == "quick_gelu"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert miniclip.load(file, activation="gelu")[0].config.activation == "gelu"


def test_open_clip_config_without_quick_gelu_means_gelu(checkpoint, tmp_path):
    directory = checkpoint("odd_oc")
    assert "quick_gelu" not in json.loads((directory / "open_clip_config.json").read_text())["model_cfg"]
    assert miniclip.load(directory)[0].config.activation == "gelu"


def test_config_file_wins_but_conflicting_keyword_is_an_error(checkpoint):
    with pytest.raises(WeightsError, match="activation='gelu' was asked for.*says 'quick_gelu'"):
        miniclip.load(checkpoint("odd_hf"), activation="gelu")  # its config.json states hidden_act
    # odd_oc's open_clip config has no "quick_gelu" key: silent, so the keyword is no contradiction (open_clip
    # pairs such configs with QuickGELU itself for OpenAI weights); without it, open_clip's default, GELU
    assert miniclip.load(checkpoint("odd_oc"), activation="quick_gelu")[0].config.activation == "quick_gelu"
    assert miniclip.load(checkpoint("odd_oc"))[0].config.activation == "gelu"


def test_heads_come_from_the_config(checkpoint):
    """3 heads of 32 cannot be inferred from shapes (64-wide heads are assumed); the config says so."""
    assert miniclip.load(checkpoint("odd_hf"))[0].config.vision_heads == 3
    bare = checkpoint("odd_hf", with_config=False)
    assert miniclip.load(bare, activation="quick_gelu")[0].config.vision_heads == 1


def test_preprocess_matches_model_image_size(checkpoint):
    _, preprocess = miniclip.load(checkpoint("odd_oc"))
    from PIL import Image
    pixels = preprocess(Image.new("RGB", (200, 120), (10, 200, 30)))
    assert pixels.shape == (3, ODD.config.image_size, ODD.config.image_size)


# --- bad files --------------------------------------------------------------------------------------

def test_missing_source(tmp_path):
    with pytest.raises(WeightsError, match="no such file"):
        miniclip.load(tmp_path / "nope.safetensors")


def test_directory_without_weights(tmp_path):
    with pytest.raises(WeightsError, match="found no .safetensors file"):
        miniclip.load(tmp_path)


def test_pickled_checkpoints_are_refused(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x02not really a pickle")
    with pytest.raises(WeightsError, match="never pickled"):
        miniclip.load(tmp_path / "pytorch_model.bin")


@pytest.mark.parametrize("content, message", [
    (b"", "not a safetensors file"),
    (b"hello", "not a safetensors file"),
    (b"<html>this is a login page, not weights</html>", "not a safetensors file"),
    (struct.pack("<Q", 12) + b"{not json!!}", "header is not valid JSON"),
    (struct.pack("<Q", 2) + b"[]", "expected a JSON object"),
])
def test_not_safetensors(tmp_path, content, message):
    path = tmp_path / "model.safetensors"
    path.write_bytes(content)
    with pytest.raises(WeightsError, match=message):
        miniclip.load(path)


def test_truncated_file(checkpoint, tmp_path):
    data = (checkpoint("odd_oc") / "open_clip_model.safetensors").read_bytes()
    path = tmp_path / "open_clip_model.safetensors"
    path.write_bytes(data[: len(data) - 1000])
    with pytest.raises(WeightsError, match="file is truncated: tensor"):
        miniclip.load(path, activation="gelu")
    path.write_bytes(data[:100])  # cut inside the header
    with pytest.raises(WeightsError, match="truncated"):
        miniclip.load(path, activation="gelu")


def test_corrupt_header_entries(tmp_path):
    path = tmp_path / "x.safetensors"
    write_raw_safetensors(path, {"a": ("F32", [2, 2], b"\0" * 12)})  # 4 floats need 16 bytes
    with pytest.raises(WeightsError, match="needs 16 bytes"):
        read_safetensors(path)


def test_unknown_layout(tmp_path):
    save_file({"encoder.weight": np.zeros((2, 2), np.float32)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(WeightsError, match="unknown weight layout.*encoder.weight"):
        miniclip.load(tmp_path)


@pytest.mark.parametrize("layout", ["transformers", "open_clip"])
def test_missing_tensors_are_listed(tmp_path, params_cache, layout):
    params = params_cache("odd_oc")
    tensors = to_transformers(params, ODD.config) if layout == "transformers" else to_open_clip(params)
    drop = [n for n in tensors if n.endswith("ln_2.bias") or n.endswith("layer_norm2.bias")][:2] + [
        "logit_scale"]
    save_file({n: t for n, t in tensors.items() if n not in drop}, str(tmp_path / "m.safetensors"))
    with pytest.raises(WeightsError, match="missing tensors") as info:
        miniclip.load(tmp_path / "m.safetensors", activation="gelu")
    for name in ("logit_scale", "1"):
        assert name in str(info.value)
    assert "ln_2.bias" in str(info.value) or "layer_norm2.bias" in str(info.value)


def test_misshaped_tensor(tmp_path, params_cache):
    tensors = to_open_clip(params_cache("odd_oc"))
    tensors["visual.transformer.resblocks.1.attn.out_proj.weight"] = np.zeros((96, 95), np.float32)
    save_file(tensors, str(tmp_path / "m.safetensors"))
    with pytest.raises(WeightsError, match=r"resblocks.1.attn.out_proj.weight: expected \(96, 96\), found \(96, 95\)"):
        miniclip.load(tmp_path / "m.safetensors", activation="gelu")


def test_unexpected_tensors_mean_an_unsupported_architecture(tmp_path, params_cache):
    tensors = to_transformers(params_cache("odd_oc"), ODD.config)
    tensors["vision_model.encoder.layers.0.layer_scale.gamma"] = np.ones(96, np.float32)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(WeightsError, match="unexpected tensors.*layer_scale"):
        miniclip.load(tmp_path, activation="gelu")


def test_integer_weights_are_refused(tmp_path, params_cache):
    tensors = to_open_clip(params_cache("odd_oc"))
    tensors["ln_final.weight"] = np.ones(80, np.int32)
    save_file(tensors, str(tmp_path / "m.safetensors"))
    with pytest.raises(WeightsError, match=r"floating point.*ln_final.weight \(int32\)"):
        miniclip.load(tmp_path / "m.safetensors", activation="gelu")


def test_unsupported_dtype(tmp_path):
    path = tmp_path / "m.safetensors"
    write_raw_safetensors(path, {"visual.proj": ("F8_E4M3", [2, 2], b"\0" * 4)})
    with pytest.raises(WeightsError, match="dtype F8_E4M3, which miniclip does not support"):
        miniclip.load(path, activation="gelu")


def test_config_disagreeing_with_tensors(tmp_path, params_cache):
    write_checkpoint(ARCHS["odd_hf"], tmp_path, params=params_cache("odd_hf"))
    config = json.loads((tmp_path / "config.json").read_text())
    config["vision_config"]["hidden_size"] = 128
    (tmp_path / "config.json").write_text(json.dumps(config))
    message = "config says vision_config.hidden_size=128 but the tensors give hidden_size=96"
    with pytest.raises(WeightsError, match=message):
        miniclip.load(tmp_path)


@pytest.mark.parametrize("act", ["gelu_new", "gelu_pytorch_tanh", "relu"])
def test_unsupported_hidden_act(tmp_path, params_cache, act):
    write_checkpoint(ARCHS["odd_hf"], tmp_path, params=params_cache("odd_hf"))
    config = json.loads((tmp_path / "config.json").read_text())
    config["vision_config"]["hidden_act"] = config["text_config"]["hidden_act"] = act
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(WeightsError, match=f"hidden_act='{act}' is not supported"):
        miniclip.load(tmp_path)


def test_unsupported_open_clip_setting(tmp_path, params_cache):
    write_checkpoint(ODD, tmp_path, params=params_cache("odd_oc"))
    config = json.loads((tmp_path / "open_clip_config.json").read_text())
    config["model_cfg"]["text_cfg"]["pool_type"] = "last"
    (tmp_path / "open_clip_config.json").write_text(json.dumps(config))
    with pytest.raises(WeightsError, match="text_cfg.pool_type='last' is not supported"):
        miniclip.load(tmp_path)


def test_corrupt_config_file(tmp_path, params_cache):
    write_checkpoint(ODD, tmp_path, params=params_cache("odd_oc"))
    (tmp_path / "open_clip_config.json").write_text("{oops")
    with pytest.raises(WeightsError, match="cannot read config"):
        miniclip.load(tmp_path)


def test_unknown_backend(checkpoint):
    with pytest.raises(ValueError, match="unknown backend 'tensorflow'"):
        miniclip.load(checkpoint("odd_oc"), backend="tensorflow")


# --- bad model inputs -------------------------------------------------------------------------------

def test_encode_image_rejects_wrong_shapes(checkpoint):
    model, _ = miniclip.load(checkpoint("odd_oc"))
    with pytest.raises(miniclip.MiniclipError, match=r"single image\? use images\[None\]"):
        model.encode_image(np.zeros((3, 80, 80), np.float32))
    with pytest.raises(miniclip.MiniclipError, match=r"shape \[B, 3, 80, 80\], got \[1, 3, 224, 224\]"):
        model.encode_image(np.zeros((1, 3, 224, 224), np.float32))
    with pytest.raises(miniclip.MiniclipError, match="float pixels"):
        model.encode_image(np.zeros((1, 3, 80, 80), np.uint8))


def test_encode_text_rejects_bad_tokens(checkpoint):
    model, _ = miniclip.load(checkpoint("odd_oc"))
    with pytest.raises(miniclip.MiniclipError, match="T <= 40"):
        model.encode_text(miniclip.tokenize(["a dog"]))  # 77 tokens for a 40-token model
    with pytest.raises(miniclip.MiniclipError, match="must lie in"):
        model.encode_text(np.full((1, 5), 60000))
    with pytest.raises(miniclip.MiniclipError, match="integer token ids"):
        model.encode_text(np.zeros((1, 5), np.float32))


def test_released_file_pages_still_read_back_the_same_values(checkpoint):
    """release() only drops pages from resident memory; touching them reads the file again."""
    from miniclip.safetensors_file import release

    tensors = read_safetensors(checkpoint("odd_oc") / "open_clip_model.safetensors")
    t = tensors["token_embedding.weight"]
    before = t.copy()
    release(t)
    np.testing.assert_array_equal(t, before)
    release(np.zeros(3))  # not a view of a file: nothing happens
