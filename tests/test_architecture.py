"""The shape of the code: no import cycles (function-level imports included), a Qt-free core.

Every ``import`` statement of every module is read from the source (also
those inside functions, which hide cycles from the interpreter), mapped to
the napari_mtunet module it names, and the graph is checked.
"""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "src" / "napari_mtunet"

#: Modules that may import Qt or napari: the front end for napari.
FRONT_END = ("napari_mtunet.widgets", "napari_mtunet._reader", "napari_mtunet._writer")


def _modules() -> dict[str, Path]:
    mods = {}
    for p in PKG.rglob("*.py"):
        parts = p.relative_to(PKG.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        mods[name] = p
    return mods


def _imports(name: str, path: Path, mods: dict[str, Path]) -> tuple[set[str], set[str]]:
    """(napari_mtunet modules imported, other top-level packages imported) by one module, anywhere in it."""
    pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    inner, outer = set(), set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [f"{mod}.{a.name}" for a in node.names] + [mod]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        for t in targets:
            if t.startswith("napari_mtunet"):
                while t not in mods and "." in t:
                    t = t.rsplit(".", 1)[0]
                if t in mods and t != name:
                    inner.add(t)
                    break
            else:
                outer.add(t.split(".")[0])
    return inner, outer


def _graph():
    mods = _modules()
    return {m: _imports(m, p, mods) for m, p in mods.items()}


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in edges:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles_even_through_function_level_imports():
    graph = _graph()
    # a package's __init__ re-exporting its submodules is not a dependency of those submodules on it
    edges = {m: {d for d in inner} for m, (inner, _) in graph.items()}
    assert _cycles(edges) == []


def test_the_core_imports_neither_qt_nor_napari_nor_the_widgets():
    for mod, (inner, outer) in _graph().items():
        if mod.startswith(FRONT_END) or mod == "napari_mtunet":
            continue
        assert not outer & {"qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "napari", "superqt", "magicgui"}, mod
        assert not any(d.startswith("napari_mtunet.widgets") for d in inner), mod


def test_workflows_do_not_depend_on_front_ends():
    for mod, (inner, _) in _graph().items():
        if mod.startswith(("napari_mtunet.workflows", "napari_mtunet.training", "napari_mtunet.data")):
            assert not any(d in ("napari_mtunet.cli", "napari_mtunet._reader") or d.startswith(FRONT_END)
                           for d in inner), (mod, inner)


def _unit(mod: str) -> str:
    """The top-level unit of a module: ``napari_mtunet.data.io`` -> ``napari_mtunet.data``."""
    parts = mod.split(".")
    return ".".join(parts[:2])


def test_no_cycles_between_packages_either():
    """Collapsed to top-level units (``data``, ``inference``, ``export``, ``modelfiles`` ...), every import
    arrow runs one way (the root package's lazy re-exports excluded)."""
    edges: dict[str, set[str]] = {}
    for mod, (inner, _) in _graph().items():
        if mod == "napari_mtunet":
            continue
        for dep in inner:
            a, b = _unit(mod), _unit(dep)
            if a != b and b != "napari_mtunet":
                edges.setdefault(a, set()).add(b)
                edges.setdefault(b, set())
    assert _cycles(edges) == []


def test_reading_model_files_sits_below_inference_and_export_only_writes():
    """Checkpoints, ONNX graphs, packages and the ONNX Runtime backend are read by ``modelfiles`` (below
    inference); ``export`` writes files for others and only front ends call it."""
    front = ("napari_mtunet.cli", "napari_mtunet.widgets", "napari_mtunet._reader", "napari_mtunet._writer")
    above_modelfiles = ("napari_mtunet.inference", "napari_mtunet.export", "napari_mtunet.workflows",
                        "napari_mtunet.training", "napari_mtunet.explain") + front
    graph = _graph()
    assert any(m.startswith("napari_mtunet.modelfiles.") for m in graph)
    for mod, (inner, _) in graph.items():
        if mod.startswith("napari_mtunet.modelfiles"):
            bad = sorted(d for d in inner if d.startswith(above_modelfiles))
            assert not bad, (mod, bad)
        if mod.startswith(("napari_mtunet.inference", "napari_mtunet.training", "napari_mtunet.workflows",
                           "napari_mtunet.data", "napari_mtunet.modelfiles", "napari_mtunet.checkpoint")):
            bad = sorted(d for d in inner if d.startswith("napari_mtunet.export"))
            assert not bad, (mod, bad)
