"""The layers stay visible: domain is pure, adapters import only domain, flows only tasks and config."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from tests.support.factories import ROOT

OURS = ("flows", "tasks", "config", "tests")
ADAPTERS = ("tasks/store", "tasks/sources", "tasks/channels", "tasks/fulfilment")
DOMAIN_THIRD_PARTY = {"pandas", "numpy"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _files(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


@pytest.mark.parametrize("path", _files("tasks/domain"), ids=lambda p: p.name)
def test_domain_imports_only_stdlib_pandas_and_numpy(path: Path) -> None:
    bad = {
        name
        for name in _imports(path)
        if name.split(".")[0] not in sys.stdlib_module_names
        and name.split(".")[0] not in DOMAIN_THIRD_PARTY
        and not name.startswith("tasks.domain")
    }
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


@pytest.mark.parametrize(
    "path", [p for f in ADAPTERS for p in _files(f)], ids=lambda p: str(p.relative_to(ROOT))
)
def test_adapters_import_only_domain_of_ours(path: Path) -> None:
    own = {n for n in _imports(path) if n.split(".")[0] in OURS}
    layer = str(path.relative_to(ROOT).parent).replace("/", ".")
    bad = {
        n
        for n in own
        if not (n.startswith("tasks.domain") or n.startswith(layer.split(".")[0] + "." + layer.split(".")[1]))
    }
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


@pytest.mark.parametrize("path", _files("flows"), ids=lambda p: p.name)
def test_flows_import_only_tasks_and_config(path: Path) -> None:
    bad = {
        n
        for n in _imports(path)
        if n.split(".")[0] in OURS and n.split(".")[0] not in {"tasks", "config", "flows"}
    }
    assert not bad


@pytest.mark.parametrize("path", _files("tasks"), ids=lambda p: str(p.relative_to(ROOT)))
def test_nothing_in_tasks_imports_flows(path: Path) -> None:
    assert not {n for n in _imports(path) if n.startswith("flows")}


@pytest.mark.parametrize("path", _files("flows") + _files("tasks") + _files("config"), ids=lambda p: p.name)
def test_only_settings_reads_the_environment(path: Path) -> None:
    if path.name == "settings.py":
        return
    tree = ast.parse(path.read_text())
    reads = [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and node.attr in {"environ", "getenv", "environb"}
        and isinstance(node.value, ast.Name)
        and node.value.id == "os"
    ]
    assert not reads, f"{path.relative_to(ROOT)} reads the environment at lines {reads}"
