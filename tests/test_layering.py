"""The dependency rules of the package layout, read from the source (ast), lazy imports inside functions included.

- ``shards/`` imports no other avtta package;
- no import cycle between the top-level packages;
- ``corruptions/`` imports neither ``pipelines`` nor ``adapt``;
- the model and the method modules import no data package (the runners may: ``models/train.py``,
  ``adapt/worker.py``, ``adapt/report.py``, ``adapt/source_data.py``).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("shards", "manifests", "corruptions", "pipelines", "models", "adapt")  # folder = avtta.<folder>
DATA = {"avtta.shards", "avtta.manifests", "avtta.corruptions", "avtta.pipelines"}
RUNNERS = {"models/train.py", "adapt/worker.py", "adapt/report.py", "adapt/source_data.py"}


def _modules() -> dict[str, tuple[str, Path]]:
    """relative file -> (dotted module name, path) for every module of the avtta packages."""
    out = {}
    for folder in (*PACKAGES, "avtta"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            base = ["avtta"] if folder == "avtta" else ["avtta", folder]
            out[rel] = (".".join(base + parts), path)
    return out


def _imports(module: str, path: Path) -> set[str]:
    """The avtta modules a file imports (relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.add(name)
            found |= {f"{name}.{a.name}" for a in node.names}  # `from avtta import manifests`
    return {n for n in found if n.startswith("avtta.")}


def _top(name: str) -> str:
    """The top-level package of a module: ``avtta.shards.io`` -> ``avtta.shards``; the root's own modules
    (``avtta.device``, ``avtta.demo``, ``avtta.cli``) count each as one."""
    return ".".join(name.split(".")[:2])


MODULES = _modules()
IMPORTS = {rel: _imports(name, path) for rel, (name, path) in MODULES.items()}
KNOWN = {_top(name) for name, _ in MODULES.values()}


def _edges() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for rel, names in IMPORTS.items():
        src = _top(MODULES[rel][0])
        graph.setdefault(src, set()).update(t for t in map(_top, names) if t != src and t in KNOWN)
    return graph


def _violations(files: list[str], forbidden: set[str]) -> list[str]:
    return sorted(f"{rel} imports {n}" for rel in files for n in IMPORTS[rel] if _top(n) in forbidden)


def test_the_scan_sees_the_tree():
    assert "shards/reader.py" in MODULES and "manifests/dataset.py" in MODULES
    assert "avtta.shards" in IMPORTS["manifests/dataset.py"] or any(
        n.startswith("avtta.shards.") for n in IMPORTS["manifests/dataset.py"]
    )
    assert "avtta.shards.schema" in IMPORTS["shards/writer.py"]  # relative imports are resolved


def test_shards_imports_no_other_avtta_package():
    files = [rel for rel in MODULES if rel.startswith("shards/")]
    assert _violations(files, KNOWN - {"avtta.shards"}) == []


def test_corruptions_imports_neither_pipelines_nor_adapt():
    files = [rel for rel in MODULES if rel.startswith("corruptions/")]
    assert _violations(files, {"avtta.pipelines", "avtta.adapt"}) == []


def test_no_cycle_between_top_level_packages():
    graph = _edges()
    cycles: set[str] = set()

    def visit(node: str, trail: list[str]) -> None:
        for nxt in sorted(graph.get(node, ())):
            if nxt in trail:
                cycles.add(" -> ".join([*trail[trail.index(nxt) :], nxt]))
            elif len(trail) < len(graph):
                visit(nxt, [*trail, nxt])

    for start in sorted(graph):
        visit(start, [start])
    assert sorted(cycles) == []


def test_model_modules_import_no_data_package():
    files = [rel for rel in MODULES if rel.startswith("models/") and rel not in RUNNERS]
    assert _violations(files, DATA) == []


def test_method_modules_import_no_data_package():
    methods = [rel for rel in MODULES if rel.startswith("adapt/methods/")]
    assert methods, "no adapt/methods/ package"
    assert _violations(methods, DATA) == []
