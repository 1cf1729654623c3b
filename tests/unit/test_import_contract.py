"""The floor plan as a test: training/ and serving/ never import each other, the core (recstack/) imports neither of
them nor validation/, except in the command layer (``cli.py`` / ``*_cli.py`` modules and ``recstack demo``, which wire
the packages together). Every import counts, the ones inside functions included."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMMAND_LAYER = {"recstack/demo.py"}
FORBIDDEN = {
    "training": {"serving"},
    "serving": {"training"},
    "recstack": {"training", "serving", "validation"},
    "validation": {"training", "serving"},
}


def _imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append((node.lineno, node.module))
    return found


def _violations(package: str) -> list[str]:
    out = []
    for path in sorted((ROOT / package).rglob("*.py")):
        name = path.relative_to(ROOT).as_posix()
        if name in COMMAND_LAYER or path.name == "cli.py" or path.name.endswith("_cli.py"):
            continue
        for line, module in _imports(path):
            if module.split(".")[0] in FORBIDDEN[package]:
                out.append(f"{name}:{line} imports {module}")
    return out


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_only_what_the_floor_plan_allows(package: str) -> None:
    assert _violations(package) == []


def test_the_check_sees_imports_inside_functions(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from serving.app import create_api\n    import training.registry\n")
    assert _imports(module) == [(2, "serving.app"), (3, "training.registry")]
