"""The package's layers point down only: formats <- convert / runtime <- cli and orchestration.

Every import in every module counts, also those inside functions (lazy imports are still dependencies)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# source folder -> the quantconv subpackage it installs as (pyproject's wheel.packages)
PACKAGES = {"formats": "formats", "convert": "convert", "runtime": "runtime", "quantconv": None}
# what each layer may import from quantconv (besides itself); the top layer may import everything
ALLOWED = {
    "formats": {"formats"},
    "convert": {"formats"},       # convert and runtime are siblings: neither imports the other
    "runtime": {"formats"},
    "top": {"formats", "convert", "runtime", "top"},
}
BASE = {"quantconv", "quantconv.errors", "quantconv._ext"}   # importable from any layer


def layer_of(module: str) -> str | None:
    """'quantconv.convert.plan' -> 'convert'; cli, sweep and other top-level modules -> 'top'."""
    if module in BASE or not module.startswith("quantconv."):
        return None
    part = module.split(".")[1]
    return part if part in ("formats", "convert", "runtime") else "top"


def modules(root: Path = ROOT) -> list[tuple[str, Path]]:
    out = []
    for folder, sub in PACKAGES.items():
        for path in sorted((root / folder).rglob("*.py")):
            rel = path.relative_to(root / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            out.append((".".join(["quantconv", *([sub] if sub else []), *parts]), path))
    return out


def imports_of(module: str, path: Path) -> list[tuple[int, str]]:
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from quantconv import convert` imports the subpackage
            found += [(node.lineno, f"{base}.{a.name}" if base == "quantconv" else base) for a in node.names]
    return sorted(set(found))   # `from m import a, b` names m once


def violations(root: Path = ROOT) -> list[str]:
    bad = []
    for module, path in modules(root):
        here = layer_of(module)
        for line, target in imports_of(module, path):
            there = layer_of(target)
            if here is None or there is None or there == here:
                continue
            if there not in ALLOWED[here]:
                bad.append(f"{path.relative_to(root)}:{line}: {here} layer imports {target} ({there} layer)")
    return bad


def test_layers_point_down():
    assert violations() == []


def test_the_walk_sees_every_layer():
    layers = {layer_of(m) for m, _ in modules()}
    assert {"formats", "convert", "runtime", "top"} <= layers
    assert len(modules()) > 40


@pytest.mark.parametrize("source, expect", [
    ("from quantconv.convert.plan import LINEAR\n", "formats layer imports quantconv.convert.plan"),
    ("def f():\n    from quantconv.runtime import engine\n", "formats layer imports quantconv.runtime"),
    ("from ...convert import plan\n", "formats layer imports quantconv.convert"),
])
def test_a_lower_layer_importing_upward_is_caught(tmp_path, source, expect):
    (tmp_path / "formats" / "onnx").mkdir(parents=True)
    (tmp_path / "formats" / "onnx" / "bad.py").write_text(source)
    for folder in ("convert", "runtime", "quantconv"):
        (tmp_path / folder).mkdir()
    found = violations(tmp_path)
    assert len(found) == 1 and expect in found[0], found


def test_siblings_are_caught(tmp_path):
    for folder in ("formats", "convert", "runtime", "quantconv"):
        (tmp_path / folder).mkdir()
    (tmp_path / "convert" / "a.py").write_text("from quantconv.runtime.engine import Engine\n")
    (tmp_path / "runtime" / "b.py").write_text("import quantconv.convert.plan\n")
    (tmp_path / "quantconv" / "cli.py").write_text("from quantconv.convert import export\nfrom quantconv import runtime\n")
    assert sorted(v.split(":")[0] for v in violations(tmp_path)) == ["convert/a.py", "runtime/b.py"]
