"""Every submodule imports by its dotted name; the registry stays reachable; no import
circles between base, persistence and registry, nor from patterns into the engine
(issue 12, items 10 and 13)."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import lit_explain
import lit_explain.analyzers

ROOT = Path(lit_explain.__file__).parent
SUBMODULES = sorted(m.name for m in pkgutil.walk_packages([str(ROOT)], "lit_explain."))


def test_import_statements_bind_every_submodule():
    names = SUBMODULES
    # ``import a.b.c`` then ``a.b.c``: attribute access through the parent packages, in a
    # fresh interpreter (one for all, to stay fast)
    code = "\n".join(f"import {n}\nassert {n}.__name__ == {n!r}" for n in names)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-800:]
    assert "lit_explain.analyzers.deep_lift" in names


def test_registry_reachable_as_the_package_and_as_a_dict():
    import lit_explain as lx
    from lit_explain.analyzers.gradient import Gradient

    assert lx.analyzers is importlib.import_module("lit_explain.analyzers")
    assert lx.analyzers["gradient"] is Gradient and "gradient" in lx.analyzers
    assert sorted(lx.analyzers) == sorted(lx.analyzer_registry)
    assert dict(lx.analyzers.items()) == lx.analyzer_registry
    assert isinstance(lx.analyzer_registry, dict)


def imported_modules(path: Path) -> set[str]:
    """Modules a file imports, module-level or inside functions, resolved to dotted names."""
    package = ".".join(path.relative_to(ROOT.parent).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[: len(base) - node.level + 1]
                names.add(".".join(base + ([node.module] if node.module else [])))
            else:
                names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_base_registry_persistence_import_in_one_direction():
    engine = ROOT / "analyzers"
    assert not {"lit_explain.analyzers.persistence", "lit_explain.analyzers.registry"} & \
        imported_modules(engine / "base.py")
    assert "lit_explain.analyzers.persistence" not in imported_modules(engine / "registry.py")


def test_patterns_do_not_import_the_engine():
    for path in (ROOT / "patterns").glob("*.py"):
        assert not any(m.startswith("lit_explain.analyzers") for m in imported_modules(path)), path
