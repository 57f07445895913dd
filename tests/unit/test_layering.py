"""The layering the folder map in docs/design.md promises, read from every module's
imports: shared/ imports nothing above itself, nothing imports cli/, and each
component imports only what its row allows."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("cli", "receiver", "worker", "migration", "deadletters", "shared", "sandbox", "bench")
# folder -> the project folders it may import (besides itself)
ALLOWED = {
    "shared": set(),
    "receiver": {"shared", "deadletters"},
    "worker": {"shared"},
    "migration": {"shared"},
    "deadletters": {"shared"},
    "sandbox": {"shared", "receiver", "worker"},
    "bench": {"shared", "sandbox", "worker", "migration", "receiver"},
    "cli": set(PACKAGES),
}


def project_imports(path: Path) -> set[str]:
    """The project packages ``path`` imports (absolute imports, anywhere in the module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found.update(name.split(".")[0] for name in names if name.split(".")[0] in PACKAGES)
    return found


def violations(root: Path = ROOT) -> list[str]:
    out = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            for imported in sorted(project_imports(path) - {package}):
                if imported not in ALLOWED[package]:
                    out.append(f"{path.relative_to(root)} imports {imported}")
    return out


def test_every_component_imports_only_what_its_layer_allows() -> None:
    assert violations() == []


def test_nothing_outside_cli_imports_cli() -> None:
    assert all("cli" not in allowed for package, allowed in ALLOWED.items() if package != "cli")


@pytest.mark.parametrize("package, line", [
    ("shared", "from worker.handle import Delivery"),
    ("worker", "import cli.main"),
    ("deadletters", "from receiver.app import create_app"),
])
def test_a_forbidden_import_is_found(tmp_path: Path, package: str, line: str) -> None:
    for name in PACKAGES:
        (tmp_path / name).mkdir()
    (tmp_path / package / "module.py").write_text(f"{line}\n")
    assert violations(tmp_path) == [f"{package}/module.py imports {line.split()[1].split('.')[0]}"]
