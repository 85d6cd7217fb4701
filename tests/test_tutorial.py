"""docs/tutorial.md runs: every ```bash and ```python block, in order, in an empty folder, on miniclip-shapes.

```bash blocks run with `bash -e -o pipefail`, with `miniclip` and `python` on PATH pointing at this checkout;
```python blocks run in one shared namespace, like notebook cells. Blocks marked ```bash norun (or
```python norun) are only shown; ```text blocks are example output.

Set MINICLIP_UPDATE_DOCS_IMAGES=1 to copy the pictures the tutorial makes into docs/images/.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TUTORIAL = REPO / "docs" / "tutorial.md"
FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```[ \t]*$", re.S | re.M)
PICTURES = {"sheet.png": "search_sheet.png", "explain_star.png": "explain_star.png",
            "explain_square.png": "explain_square.png"}  # made by the tutorial -> docs/images/


def blocks() -> list[tuple[str, str, int]]:
    """(language, code, line number) of every block the test runs."""
    text = TUTORIAL.read_text(encoding="utf-8")
    found = []
    for match in FENCE.finditer(text):
        info = match.group(1).split()
        if info and info[0] in ("bash", "python") and "norun" not in info[1:]:
            found.append((info[0], match.group(2), text.count("\n", 0, match.start()) + 1))
    return found


def test_the_tutorial_has_the_sections_it_promises():
    text = TUTORIAL.read_text(encoding="utf-8")
    for heading in ["Zero-shot classification", "Prompt ensembling", "Image search", "Embedding arithmetic",
                    "Linear probes", "Seeing inside the model"]:
        assert re.search(rf"^## \d\. {heading}", text, re.M), heading
    langs = [lang for lang, _, _ in blocks()]
    assert langs.count("bash") >= 6 and langs.count("python") >= 6
    # every picture the tutorial shows exists
    for image in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text):
        assert (TUTORIAL.parent / image).is_file(), image


@pytest.mark.skipif(shutil.which("bash") is None, reason="the tutorial's shell blocks need bash")
def test_every_tutorial_block_runs(tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    work.mkdir()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, command in {"miniclip": f'exec "{sys.executable}" -m miniclip "$@"',
                          "python": f'exec "{sys.executable}" "$@"'}.items():
        shim = bin_dir / name
        shim.write_text(f"#!/bin/sh\n{command}\n")
        shim.chmod(0o755)
    env = {"MINICLIP_WEIGHTS": "miniclip-shapes", "MINICLIP_HOME": str(tmp_path / "home"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "PATH": os.pathsep.join([str(bin_dir), os.environ.get("PATH", "")])}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(work)

    namespace: dict = {"__name__": "__tutorial__"}
    for lang, code, line in blocks():
        where = f"docs/tutorial.md, block at line {line}"
        if lang == "bash":
            result = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", code], cwd=work, env=os.environ.copy(),
                                    capture_output=True, text=True, timeout=120)
            if result.returncode != 0:
                pytest.fail(f"{where} failed ({result.returncode}):\n{code}\n--- stdout\n{result.stdout}\n"
                            f"--- stderr\n{result.stderr}")
            assert "Traceback" not in result.stderr, f"{where}:\n{result.stderr}"
        else:
            try:
                exec(compile(code, where, "exec"), namespace)
            except Exception as e:  # name the block, not just the line inside it
                pytest.fail(f"{where} raised {type(e).__name__}: {e}\n{code}")

    # what the tutorial says it makes
    assert (work / "photos.index" / "manifest.json").is_file()
    assert (work / "sheet.png").is_file() and (work / "results.html").is_file()
    if os.environ.get("MINICLIP_UPDATE_DOCS_IMAGES"):
        for made, name in PICTURES.items():
            shutil.copyfile(work / made, REPO / "docs" / "images" / name)
