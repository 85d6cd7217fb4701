"""Sharded checkpoints (`model.safetensors.index.json` + `model-0000k-of-0000n.safetensors`, what
transformers' `save_pretrained` writes for large models such as ViT-bigG): loaded as if unsharded, with a
clear error for every way the index and the shards can disagree."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file
from seeded import ARCHS, seeded_images

import miniclip
from miniclip.cli import main
from miniclip.errors import WeightsError
from miniclip.safetensors_file import read_safetensors
from miniclip.weights import load_weights

FILES = {"open_clip": ("open_clip_model.safetensors", "open_clip_config.json"),
         "transformers": ("model.safetensors", "config.json")}


def shard(src_dir: Path, dst_dir: Path, layout: str, n_shards: int = 3) -> Path:
    """Split the single-file checkpoint of `src_dir` into `n_shards` files and an index, as
    `save_pretrained(max_shard_size=...)` would; returns the index path."""
    weights, config = FILES[layout]
    tensors = {name: np.array(t) for name, t in read_safetensors(src_dir / weights).items()}
    names = list(tensors)
    stem = weights.removesuffix(".safetensors")
    dst_dir.mkdir(parents=True, exist_ok=True)
    weight_map = {}
    for k in range(n_shards):
        part = names[k::n_shards]  # interleaved: every shard holds tensors of every block
        file = f"{stem}-{k + 1:05d}-of-{n_shards:05d}.safetensors"
        save_file({n: tensors[n] for n in part}, str(dst_dir / file))
        weight_map.update(dict.fromkeys(part, file))
    index = dst_dir / f"{weights}.index.json"
    total = sum(t.nbytes for t in tensors.values())
    index.write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    if (src_dir / config).is_file():
        shutil.copyfile(src_dir / config, dst_dir / config)
    return index


@pytest.mark.parametrize("name", ["odd_hf", "odd_oc"])
def test_sharded_checkpoint_loads_like_the_single_file(name, checkpoint, tmp_path):
    src, layout = checkpoint(name), ARCHS[name].layout
    index = shard(src, tmp_path / "sharded", layout)
    single_params, single_cfg = load_weights(src)
    for source in (tmp_path / "sharded", index):  # the directory, or the index itself
        params, cfg = load_weights(source)
        assert cfg == single_cfg
        assert params.keys() == single_params.keys()
        for key in params:
            np.testing.assert_array_equal(params[key], single_params[key])
    model, _ = miniclip.load(tmp_path / "sharded", backend="numpy")
    reference, _ = miniclip.load(src, backend="numpy")
    images = seeded_images(ARCHS[name])
    np.testing.assert_array_equal(model.encode_image(images), reference.encode_image(images))


def test_missing_shard_is_named(checkpoint, tmp_path):
    index = shard(checkpoint("odd_hf"), tmp_path, "transformers")
    (tmp_path / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(WeightsError, match=r"shard model-00002-of-00003.safetensors is missing"):
        load_weights(index)


def test_tensor_missing_from_its_shard(checkpoint, tmp_path):
    index = shard(checkpoint("odd_hf"), tmp_path, "transformers")
    data = json.loads(index.read_text())
    data["weight_map"]["not.in.any.shard"] = "model-00001-of-00003.safetensors"
    index.write_text(json.dumps(data))
    with pytest.raises(WeightsError, match=r"does not hold, e.g. 'not.in.any.shard'"):
        load_weights(index)


def test_tensor_the_index_does_not_mention(checkpoint, tmp_path):
    index = shard(checkpoint("odd_hf"), tmp_path, "transformers")
    data = json.loads(index.read_text())
    dropped = next(iter(data["weight_map"]))
    del data["weight_map"][dropped]
    index.write_text(json.dumps(data))
    with pytest.raises(WeightsError, match=rf"does not assign to it, e.g. '{dropped}'"):
        load_weights(index)


@pytest.mark.parametrize("content, message", [
    ("not json", "cannot read the shard index"),
    ('{"metadata": {}}', "needs a non-empty \"weight_map\""),
    ('{"weight_map": {"a": "../elsewhere/model.safetensors"}}', "expected the file name of a .safetensors shard"),
    ('{"weight_map": {"a": "model.bin"}}', "expected the file name of a .safetensors shard"),
])
def test_bad_index(content, message, tmp_path):
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(content)
    with pytest.raises(WeightsError, match=message):
        load_weights(index)


def test_convert_a_sharded_checkpoint(checkpoint, tmp_path, capsys):
    index = shard(checkpoint("odd_hf"), tmp_path / "sharded", "transformers")
    assert main(["convert", str(tmp_path / "sharded"), str(tmp_path / "half"), "--dtype", "float16"]) == 0
    assert "in float16" in capsys.readouterr().out
    out_index = tmp_path / "half" / index.name
    data = json.loads(out_index.read_text())
    assert data["weight_map"] == json.loads(index.read_text())["weight_map"]
    shards = sorted((tmp_path / "half").glob("model-*.safetensors"))
    assert len(shards) == 3 and data["metadata"]["total_size"] == json.loads(index.read_text())[
        "metadata"]["total_size"] // 2
    half_params, _ = load_weights(tmp_path / "half")
    full_params, _ = load_weights(index)
    for key, value in full_params.items():
        np.testing.assert_array_equal(half_params[key], value.astype(np.float16).astype(np.float32))
    with pytest.raises(WeightsError, match="give a directory for its shards"):
        miniclip.hub.convert.convert(index, tmp_path / "x.safetensors")
