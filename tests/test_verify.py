"""`miniclip verify` on seeded weights: against the stored PyTorch fixtures (always), against torch itself
(only when torch + transformers/open_clip are installed: skipped in CI), and openai's published example."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import FIXTURES, record
from seeded import ARCHS, seeded_images

from miniclip.apps import verify as verify_module
from miniclip.apps.verify import verify
from miniclip.backends import BACKENDS, get_backend
from miniclip.cli import main

LIBRARY = {"odd_oc": "open_clip", "odd_hf": "transformers"}


def available_backends() -> list[str]:
    """Every backend whose library imports here (numba is a dependency, but verify copes without it)."""
    found = []
    for name in BACKENDS:
        try:
            get_backend(name)
        except ImportError:
            continue
        found.append(name)
    return sorted(found)


def fixture_with_inputs(tmp_path: Path, name: str, logit_offset: float = 0.0) -> Path:
    """The stored reference outputs plus the inputs they were made from, in verify's fixture format."""
    ref = np.load(FIXTURES / f"model_{name}.npz")
    path = tmp_path / f"{name}_reference.npz"
    np.savez(path, pixels=seeded_images(ARCHS[name]), tokens=ref["tokens"], image_features=ref["image_features"],
             text_features=ref["text_features"], logits_per_image=ref["logits_per_image"] + logit_offset)
    return path


@pytest.mark.parametrize("name", list(LIBRARY))
def test_verify_against_stored_fixture(name, checkpoint, tmp_path, capsys):
    npz = fixture_with_inputs(tmp_path, name)
    assert main(["verify", "--weights", str(checkpoint(name)), "--reference-fixture", str(npz), "--no-torch"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("fixture ")]
    assert sorted(row[2] for row in rows) == available_backends() and all(row[-1] == "ok" for row in rows)

    results = verify(checkpoint(name), reference_fixture=npz, use_torch=False, out=io.StringIO())
    for r in results:
        record(f"{name} via miniclip verify, {r.backend} / logits_per_image (abs)", r.logits)
        assert r.ok and r.logits < 1e-3 and r.image_features < 1e-4 and r.text_features < 1e-4


def test_verify_fails_when_the_outputs_differ(checkpoint, tmp_path, capsys):
    npz = fixture_with_inputs(tmp_path, "odd_oc", logit_offset=0.01)
    assert main(["verify", "--weights", str(checkpoint("odd_oc")), "--reference-fixture", str(npz),
                 "--no-torch", "--backends", "numpy"]) == 1
    captured = capsys.readouterr()
    assert "FAIL" in captured.out and "1 of 1 comparisons exceed the tolerances" in captured.err


def test_verify_without_any_reference_says_so(checkpoint, capsys):
    assert main(["verify", "--weights", str(checkpoint("odd_oc")), "--no-torch", "--backends", "numpy"]) == 1
    captured = capsys.readouterr()
    assert "published example skipped" in captured.out and "nothing to compare with" in captured.err


def test_published_example_runs_for_vit_b_32(checkpoint, capsys):
    """Seeded weights in ViT-B/32's architecture with QuickGELU look like OpenAI's to verify, so it runs the
    published CLIP.png example on them, and (random weights) must fail it."""
    assert main(["verify", "--weights", str(checkpoint("vit_b_32")), "--no-torch", "--backends", "numpy"]) == 1
    out = capsys.readouterr().out
    assert "CLIP.png vs ['a diagram', 'a dog', 'a cat']: probabilities" in out
    row = next(line for line in out.splitlines() if line.startswith("published example"))
    assert row.split()[-1] == "FAIL"


@pytest.mark.skipif(not os.environ.get("MINICLIP_VIT_B_32"), reason="real ViT-B/32 weights not present: set "
                    "MINICLIP_VIT_B_32 (see tests/test_published_weights.py)")
def test_published_example_with_real_weights():
    results = verify(os.environ["MINICLIP_VIT_B_32"], use_torch=False, out=io.StringIO())
    published = [r for r in results if r.reference.startswith("published")]
    assert published and all(r.ok for r in published)


@pytest.mark.parametrize("name", list(LIBRARY))
def test_verify_against_torch(name, checkpoint, tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip(LIBRARY[name])
    saved = tmp_path / "reference.npz"
    results = verify(checkpoint(name), save_reference=saved, out=io.StringIO())
    from_torch = [r for r in results if "torch" in r.reference]
    assert from_torch and all(r.ok for r in from_torch)
    again = verify(checkpoint(name), reference_fixture=saved, use_torch=False, out=io.StringIO())
    assert again and all(r.ok for r in again)


def test_clip_png_ships_with_the_package():
    tests_copy = Path(__file__).resolve().parent / "data" / "CLIP.png"
    assert verify_module.CLIP_PNG.read_bytes() == tests_copy.read_bytes()


def test_no_torch_import_at_module_level():
    code = ("import sys, miniclip, miniclip.cli, miniclip.hub.download, miniclip.apps.verify, miniclip.hub.convert; "
            "miniclip.cli.build_parser(); assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120,
                   env=os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parents[1])})
