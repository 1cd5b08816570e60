"""The layers import only downward: service -> ops -> jobs -> core, and service never imports jobs.

Walks every module's imports (top-level and inside functions: a lazy import is still a
dependency) with ``ast``, so nothing is executed. Also: no import circles between modules,
and the light layers stay light (core and service load neither OpenCV, numpy, Pillow nor
Cloudinary, so Gunicorn and the operator CLI start small).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("core", "jobs", "ops", "service")
# What each layer may import from the project, besides itself.
ALLOWED = {
    "core": set(),
    "jobs": {"core"},
    "ops": {"core", "jobs"},
    "service": {"core", "ops"},
}
HEAVY = {"cv2", "numpy", "PIL", "cloudinary", "onnxruntime"}
LIGHT_LAYERS = ("core", "ops", "service")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found = {}
    for layer in LAYERS:
        for path in sorted((ROOT / layer).rglob("*.py")):
            if path.name == "gunicorn.conf.py":  # a Gunicorn config file, not an importable module
                continue
            found[_module_name(path)] = path
    return found


MODULES = _modules()


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, dotted target) for every import in the file, resolved to a module where one exists."""
    tree = ast.parse(path.read_text(), filename=str(path))
    targets: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}:{node.lineno}: use absolute imports so the layer is visible"
            base = node.module or ""
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                targets.append((node.lineno, candidate if candidate in MODULES else base))
    return targets


def _layer(dotted: str) -> str | None:
    top = dotted.split(".")[0]
    return top if top in LAYERS else None


def test_the_walk_sees_every_layer() -> None:
    for layer in LAYERS:
        assert any(name.split(".")[0] == layer for name in MODULES), f"no modules found under {layer}/"
    assert "service.auth" in MODULES and "jobs.tasks" in MODULES and "core.db.database" in MODULES


@pytest.mark.parametrize("layer", LAYERS)
def test_imports_point_only_downward(layer: str) -> None:
    wrong = []
    for name, path in MODULES.items():
        if _layer(name) != layer:
            continue
        for line, target in _imports(path):
            other = _layer(target)
            if other is not None and other != layer and other not in ALLOWED[layer]:
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports {target} ({layer} -> {other})")
    assert not wrong, "imports against the layering (service -> ops -> jobs -> core):\n" + "\n".join(wrong)


@pytest.mark.parametrize("layer", LIGHT_LAYERS)
def test_light_layers_do_not_load_image_libraries(layer: str) -> None:
    heavy = [f"{path.relative_to(ROOT)}:{line} imports {target}"
             for name, path in MODULES.items() if _layer(name) == layer
             for line, target in _imports(path) if target.split(".")[0] in HEAVY]
    assert not heavy, "\n".join(heavy)


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        if path.name == "__init__.py" and not path.read_text().strip():
            continue
        graph[name] = {t for _, t in _imports(path) if t in MODULES and t != name
                       and MODULES[t].name != "__init__.py"}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_circles() -> None:
    assert _cycles(_graph()) == []


def test_the_circle_finder_finds_a_circle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_image_copies_every_layer() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    missing = [layer for layer in LAYERS if f"COPY {layer} {layer}" not in dockerfile]
    assert missing == [], f"Dockerfile must COPY these packages too: {missing}"


def test_the_image_has_the_files_the_console_serves() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "COPY clients/js/src clients/js/src" in dockerfile
    assert (ROOT / "clients" / "js" / "src" / "index.js").exists()
