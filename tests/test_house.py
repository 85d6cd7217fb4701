"""The package's structure, as docs/architecture.md draws it: the wings import the model, never the other
way round; nothing imports from the command line; no import circles; backends declare their ops. (That
the package works where Numba cannot be imported is tests/test_backends.py's.)"""

from __future__ import annotations

import ast
import sys
import types
from pathlib import Path

import pytest

import miniclip
from miniclip.backends import BACKENDS, REQUIRED, get_backend

PACKAGE = Path(miniclip.__file__).resolve().parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every miniclip module `path` imports, at module level or inside functions."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("miniclip")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.startswith("miniclip"):
                found.add(module)
                # `from . import x` may name a submodule
                found |= {f"{module}.{a.name}" for a in node.names if (PACKAGE.parent / f"{module}.{a.name}"
                          .replace(".", "/")).with_suffix(".py").exists()}
    return found - {name}


GRAPH = {_module_name(p): _imports(p) for p in PACKAGE.rglob("*.py")}


def test_nothing_imports_from_the_command_line():
    back = {m: sorted(i for i in deps if i == "miniclip.cli" or i.startswith("miniclip.cli."))
            for m, deps in GRAPH.items() if not m.startswith("miniclip.cli") and m != "miniclip.__main__"}
    assert not {m: d for m, d in back.items() if d}


def test_the_model_does_not_import_the_wings():
    core = [_module_name(p) for p in PACKAGE.glob("*.py") if p.name != "__main__.py"]  # what a learner reads
    wings = ("miniclip.apps", "miniclip.cli", "miniclip.hub", "miniclip.bench", "miniclip.backends")
    allowed = {"miniclip": {"miniclip.backends", "miniclip.hub.download", "miniclip.hub.registry",
                            "miniclip.hub.random_weights"}}  # load()
    for module in core:
        bad = {d for d in GRAPH[module] if d.startswith(wings)} - allowed.get(module, set())
        assert not bad, f"{module} imports {sorted(bad)}"


def test_no_import_circles():
    def visit(module, stack):
        if module in stack:
            return stack[stack.index(module):] + [module]
        for dep in sorted(GRAPH.get(module, ())):
            if dep == "miniclip" or dep not in GRAPH:  # the package itself (load, tokenize) is the top
                continue
            circle = visit(dep, stack + [module])
            if circle:
                return circle
        return None

    for module in GRAPH:
        if module != "miniclip":
            assert visit(module, []) is None, " -> ".join(visit(module, []))


def test_a_backend_must_define_every_op(monkeypatch):
    fake = types.ModuleType("miniclip_fake_ops")
    for op in REQUIRED:
        if op not in ("attention", "to_host"):
            setattr(fake, op, lambda *a, **k: None)
    monkeypatch.setitem(sys.modules, "miniclip_fake_ops", fake)
    monkeypatch.setitem(BACKENDS, "fake", "miniclip_fake_ops")
    with pytest.raises(TypeError, match="does not define attention, to_host"):
        get_backend("fake")
    for name in ("numpy", "numba"):
        assert all(hasattr(get_backend(name), op) for op in REQUIRED)
