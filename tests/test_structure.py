"""The package's shape: data flows one way (no module imports from a layer above it, imports
inside functions included), no import cycles, no private name imported across modules, each
package declares its public API, and `cxr predict` loads no Flask."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "cxr"

# Layers, lowest first: a module may import from its own layer or any layer below.
LAYERS = [
    {"cxr", "cxr.errors", "cxr.config"},
    {"cxr.data", "cxr.preprocess"},
    {
        "cxr.augment",
        "cxr.losses",
        "cxr.optim",
        "cxr.checkpoint",
        "cxr.distributed",
        "cxr.metrics",
        "cxr.bootstrap",
        "cxr.plots",
        "cxr.progressive",
        "cxr.decision",
        "cxr.labelmap",
        "cxr.tracking",
    },
    {"cxr.models"},
    {"cxr.run", "cxr.runtime"},
    {
        "cxr.train",
        "cxr.calibration",
        "cxr.evaluate",
        "cxr.compare",
        "cxr.averaging",
        "cxr.ensemble",
        "cxr.adapt",
        "cxr.xrv",
    },
    {"cxr.ood", "cxr.explain"},
    {"cxr.inference"},
    {"cxr.report", "cxr.tune"},
    {"cxr.serve"},
    {"cxr.cli"},
]


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _layer(module: str) -> int:
    for depth in range(module.count(".") + 1, 0, -1):
        head = ".".join(module.split(".")[:depth])
        for i, layer in enumerate(LAYERS):
            if head in layer:
                return i
    raise AssertionError(f"{module} is in no layer of tests/test_structure.py: add it")


def _imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(module, names, line) of every import, at any depth (inside functions too)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module, [a.name for a in node.names], node.lineno))
    return found


def test_every_import_points_down_the_data_flow():
    bad = []
    for module, path in _modules().items():
        for target, _, line in _imports(path):
            if target == "cxr" or not target.startswith("cxr."):
                continue
            if _layer(target) > _layer(module):
                bad.append(f"{path.relative_to(SRC)}:{line} {module} imports {target}")
    assert not bad, "imports against the data flow:\n" + "\n".join(bad)


def test_no_import_cycles():
    tool = SRC.parents[1] / "shared" / "tools" / "import_cycles.py"
    if not tool.is_file():
        pytest.skip(f"{tool} not found")
    done = subprocess.run(
        [sys.executable, str(tool), str(SRC), "cxr"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and "0 import cycles" in done.stdout, done.stdout + done.stderr


def test_no_private_name_is_imported_from_another_module():
    bad = []
    for path in _modules().values():
        for target, names, line in _imports(path):
            if target.startswith("cxr"):
                bad += [
                    f"{path.relative_to(SRC)}:{line} {target}.{n}"
                    for n in names
                    if n.startswith("_") and n != "__version__"
                ]
    assert not bad, "private names used across modules:\n" + "\n".join(bad)


@pytest.mark.parametrize("package", ["models", "inference", "ood", "explain", "report", "tune"])
def test_each_package_declares_its_public_api(package):
    import importlib

    mod = importlib.import_module(f"cxr.{package}")
    assert mod.__all__, f"cxr.{package} has no __all__"
    missing = [name for name in mod.__all__ if not hasattr(mod, name)]
    assert not missing, f"cxr.{package}.__all__ names what it lacks: {missing}"


def test_predict_and_the_cli_load_no_flask():
    code = "import sys, cxr.cli, cxr.inference; print('flask' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "False", done.stdout + done.stderr
