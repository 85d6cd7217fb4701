"""Loading: both layouts, config files, dtypes, and a clear error for every kind of bad file."""

from __future__ import annotations

import json
import struct
import warnings
from pathlib import Path

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


# --- crafted headers and configs: a WeightsError naming the problem, never a raw exception ----------

def write_header(path, header: bytes | object, data: bytes = b"") -> None:
    """A safetensors file with `header` (JSON-encoded unless given as bytes) as its header."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


def entry(dtype="F32", shape=(2,), offsets=(0, 8)):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


@pytest.mark.parametrize("header, message", [
    ({"a": entry(shape=[0, 2**63], offsets=[0, 0])}, r"shape \[0, 9223372036854775808\], too large for any array"),
    ({"a": entry(shape=[2**40, 2**40], offsets=[0, 0])}, "too large for any array"),
    ({"a": entry(shape=[1] * 100, offsets=[0, 4])}, "has 100 dimensions"),
    ({"a": entry(shape=[True, 2])}, r"has shape \[True, 2\]: expected a list of integers >= 0"),
    ({"a": entry(shape=[2.0])}, r"has shape \[2.0\]"),
    ({"a": entry(shape=[-2])}, r"has shape \[-2\]"),
    ({"a": {"dtype": "F32", "shape": "2", "data_offsets": [0, 8]}}, "has shape '2'"),
    ({"a": entry(dtype=["F32"])}, r"has dtype \['F32'\]: expected a name"),
    ({"a": entry(dtype=None)}, "has dtype None"),
    ({"a": entry(offsets=[False, 8])}, r"data_offsets \[False, 8\]"),
    ({"a": entry(offsets=[8, 0])}, r"data_offsets \[8, 0\]"),
    ({"a": "F32"}, "lacks dtype/shape/data_offsets"),
    (b'{"a": {"dtype": "F32", "shape": [' + b"9" * 5000 + b'], "data_offsets": [0, 8]}}',
     "header is not valid JSON.*digits"),
    (b"[" * 100_000 + b"]" * 100_000, "header is not valid JSON.*nested too deeply"),
    (b'{"a": ' + b'{"b": ' * 50_000 + b"1" + b"}" * 50_001, "nested too deeply"),
    (b"5", "expected a JSON object, found int"),
    (b'"F32"', "expected a JSON object, found str"),
    (b"null", "expected a JSON object, found NoneType"),
    (b"\xff\xfe{}", "header is not valid JSON"),
])
def test_crafted_headers(tmp_path, header, message):
    path = tmp_path / "model.safetensors"
    write_header(path, header, data=b"\0" * 8)
    with pytest.raises(WeightsError, match=message) as info:
        read_safetensors(path)
    assert str(path) in str(info.value) and len(str(info.value)) < 500  # names the file, cut short
    with pytest.raises(WeightsError, match=message):
        miniclip.load(path, activation="gelu")


def test_a_huge_tensor_name_is_cut_in_the_message(tmp_path):
    path = tmp_path / "model.safetensors"
    write_header(path, {"x" * 100_000: entry(shape=[True])}, data=b"\0" * 8)
    with pytest.raises(WeightsError, match=r"tensor 'xxx.*\.\.\. has shape") as info:
        read_safetensors(path)
    assert len(str(info.value)) < 500


def test_crafted_shard_index(tmp_path):
    index = tmp_path / "model.safetensors.index.json"
    for raw, message in [(b"[" * 100_000, "nested too deeply"), (b'{"weight_map": ' + b"1" * 5000 + b"}", "digits"),
                         (b"\xff", "not valid JSON")]:
        index.write_bytes(raw)
        with pytest.raises(WeightsError, match=f"cannot read the shard index.*{message}"):
            miniclip.load(index, activation="gelu")


def with_config(tmp_path, checkpoint, arch: str, change) -> Path:
    """A copy of the seeded checkpoint `arch` (weights linked) whose config file `change` has edited."""
    source = checkpoint(arch)
    for name in ("model.safetensors", "open_clip_model.safetensors"):
        if (source / name).is_file():
            (tmp_path / name).symlink_to(source / name)
    config_name = "config.json" if (source / "config.json").is_file() else "open_clip_config.json"
    config = json.loads((source / config_name).read_text())
    config = change(config)
    (tmp_path / config_name).write_text(config if isinstance(config, str) else json.dumps(config))
    return tmp_path


def setting(section: str, key: str, value):
    def change(config):
        target = config
        for part in section.split("."):
            target = target[part] if part else target
        target[key] = value
        return config
    return change


@pytest.mark.parametrize("arch, change, message", [
    # open_clip_config.json
    ("odd_oc", setting("model_cfg.vision_cfg", "head_width", 0), "vision_cfg.head_width=0 must be an integer >= 1"),
    ("odd_oc", setting("model_cfg.vision_cfg", "head_width", 32.5), "vision_cfg.head_width=32.5 must be an integer"),
    ("odd_oc", setting("model_cfg.vision_cfg", "head_width", True), "vision_cfg.head_width=True must be an integer"),
    ("odd_oc", setting("model_cfg.text_cfg", "heads", "abc"), "text_cfg.heads='abc' must be an integer >= 1"),
    ("odd_oc", setting("model_cfg.text_cfg", "heads", 7), "text width 80 is not divisible into 7 heads"),
    ("odd_oc", setting("model_cfg", "quick_gelu", "yes"), "quick_gelu='yes' must be true or false"),
    ("odd_oc", setting("model_cfg", "vision_cfg", [1, 2]), "vision_cfg must be a JSON object, got list"),
    ("odd_oc", setting("model_cfg", "text_cfg", "big"), "text_cfg must be a JSON object, got str"),
    ("odd_oc", setting("", "model_cfg", 5), "model_cfg must be a JSON object, got int"),
    ("odd_oc", setting("model_cfg.vision_cfg", "width", [96]), r"config says vision_cfg.width=\[96\]"),
    # config.json (transformers)
    ("odd_hf", setting("vision_config", "num_attention_heads", "abc"),
     "vision_config.num_attention_heads='abc' must be an integer >= 1"),
    ("odd_hf", setting("text_config", "num_attention_heads", 0), "text_config.num_attention_heads=0 must be"),
    ("odd_hf", setting("vision_config", "hidden_act", ["gelu"]), r"vision_config.hidden_act=\['gelu'\] must be a str"),
    ("odd_hf", setting("text_config", "hidden_act", {"name": "gelu"}), "text_config.hidden_act=.* must be a string"),
    ("odd_hf", setting("", "vision_config", [1]), "vision_config must be a JSON object, got list"),
    ("odd_hf", setting("", "text_config", "x"), "text_config must be a JSON object, got str"),
    ("odd_hf", setting("vision_config", "layer_norm_eps", -1e-5), "vision_config.layer_norm_eps=-1e-05 must be"),
    ("odd_hf", setting("text_config", "layer_norm_eps", 0), "text_config.layer_norm_eps=0 must be a finite number > 0"),
    ("odd_hf", setting("text_config", "layer_norm_eps", float("nan")), "layer_norm_eps=nan must be a finite"),
    ("odd_hf", setting("text_config", "layer_norm_eps", float("inf")), "layer_norm_eps=inf must be a finite"),
    ("odd_hf", setting("text_config", "layer_norm_eps", "1e-5"), "layer_norm_eps='1e-5' must be a finite"),
    ("odd_hf", setting("text_config", "layer_norm_eps", True), "layer_norm_eps=True must be a finite"),
    # either: not JSON a parser survives
    ("odd_hf", lambda config: "[" * 100_000 + "]" * 100_000, "cannot read config: not valid JSON.*nested too deeply"),
    ("odd_oc", lambda config: '{"model_cfg": ' + "7" * 5000 + "}", "cannot read config: not valid JSON.*digits"),
    ("odd_hf", lambda config: "[]", "expected a JSON object"),
])
def test_crafted_configs(tmp_path, checkpoint, arch, change, message):
    directory = with_config(tmp_path, checkpoint, arch, change)
    with pytest.raises(WeightsError, match=message) as info:
        miniclip.load(directory)
    assert "config.json" in str(info.value)  # names the file


def test_clip_config_refuses_values_no_model_can_run():
    good = ODD.config.to_dict()
    for change, message in [({"vision_heads": 0}, "vision_heads must be a positive integer, got 0"),
                            ({"text_layers": "2"}, "text_layers must be a positive integer, got '2'"),
                            ({"embed_dim": True}, "embed_dim must be a positive integer, got True"),
                            ({"text_heads": 3}, "text width 80 is not divisible into 3 heads"),
                            ({"activation": "relu"}, "activation must be one of"),
                            ({"activation": ["gelu"]}, "activation must be one of"),
                            ({"layer_norm_eps": -1e-5}, "layer_norm_eps must be a finite number > 0"),
                            ({"layer_norm_eps": float("nan")}, "layer_norm_eps must be a finite number > 0")]:
        with pytest.raises(ValueError, match=message):
            miniclip.CLIPConfig(**(good | change))
    assert miniclip.CLIPConfig(**good) == ODD.config


def test_shapes_that_give_an_impossible_config(tmp_path, params_cache):
    tensors = to_open_clip(params_cache("odd_oc"))
    tensors["text_projection"] = np.zeros((80, 0), np.float32)  # embed_dim 0
    save_file(tensors, str(tmp_path / "m.safetensors"))
    with pytest.raises(WeightsError, match="the tensors: embed_dim must be a positive integer, got 0"):
        miniclip.load(tmp_path / "m.safetensors", activation="gelu")
