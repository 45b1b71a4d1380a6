"""The package's shape: modules depend on each other in one direction."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "shared" / "jetmail"


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ("jetmail", *path.relative_to(PACKAGE).with_suffix("").parts)
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """Every jetmail module ``path`` imports, at any depth of the file (functions, TYPE_CHECKING blocks)."""

    def owner(name: str) -> str:
        while name not in known and "." in name:
            name = name.rsplit(".", 1)[0]
        return name

    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {owner(a.name) for a in node.names if a.name.startswith("jetmail")}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("jetmail"):
            module = node.module or ""
            found |= {owner(f"{module}.{a.name}") for a in node.names}
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in graph.get(node, ()):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_no_module_imports_one_that_imports_it_back() -> None:
    known = modules()
    graph = {name: {d for d in imports(path, known) if d in known and d != name} for name, path in known.items()}
    # a package's __init__ may gather its own modules; that is not a cycle between concerns
    graph = {name: {d for d in deps if not name.startswith(d + ".")} for name, deps in graph.items()}
    found = cycles(graph)
    assert not found, found


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("name", ["jetmail.audience.addresses", "jetmail.campaigns.ids"])
def test_the_leaf_modules_import_nothing_of_jetmail(name: str) -> None:
    known = modules()
    assert imports(known[name], known) == set()


KEY_LITERAL = re.compile(r"^[A-Z][A-Z_]+#")


def key_literals(path: Path) -> list[str]:
    """String constants (not docstrings) in ``path`` that begin like a DynamoDB key: ``CAMPAIGN#``, ``f"MSG#{…}"``."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    parts = {id(part) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr) for part in node.values}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant):
            first = node.values[0].value
            if isinstance(first, str) and KEY_LITERAL.match(first):
                found.append(f"{path.name}:{node.lineno}: f\"{first}…\"")
        elif (isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings | parts
              and KEY_LITERAL.match(node.value)):
            found.append(f"{path.name}:{node.lineno}: {node.value!r}")
    return found


def test_keys_are_spelled_only_in_the_storage_package() -> None:
    storage = PACKAGE / "storage"
    found = [hit for path in sorted(PACKAGE.rglob("*.py")) if storage not in path.parents for hit in key_literals(path)]
    assert not found, "\n".join(found)


def test_the_key_literal_finder_finds_them(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text('"""MSG#<id> in a docstring is documentation."""\nA = "SUPP#ERASED"\nB = f"CAMPAIGN#{x}"\n'
                      'C = "a#b"\n')
    assert [hit.split(": ", 1)[1] for hit in key_literals(sample)] == ["'SUPP#ERASED'", 'f"CAMPAIGN#…"']


TOP_LEVEL = {"jetmail", "jetmail.bootstrap", "jetmail.cli", "jetmail.config", "jetmail.demo", "jetmail.observability",
             "jetmail.scheduler", "jetmail.services", "jetmail.tasks", "jetmail.worker_services"}
DOMAINS = ("audience", "messaging", "campaigns", "deliverability", "compliance", "reporting")
ADAPTERS = ("storage", "kv", "aws", "queue")


def test_the_top_level_keeps_only_entry_points_and_wiring() -> None:
    top = {name for name, path in modules().items() if path.parent == PACKAGE}
    assert top <= TOP_LEVEL, f"put {sorted(top - TOP_LEVEL)} in a domain package or an adapter"


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_adapters_import_no_domain_package(adapter: str) -> None:
    known = modules()
    wrong = {name: sorted(m for m in imports(path, known) if m.split(".")[1] in DOMAINS)
             for name, path in known.items() if name.split(".")[1:2] == [adapter]}
    assert not {name: found for name, found in wrong.items() if found}


def test_the_tests_mirror_the_packages() -> None:
    tests = PACKAGE.parents[1] / "tests"
    folders = {p.name for p in tests.iterdir() if p.is_dir() and any(p.glob("test_*.py"))}
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    besides = {"deploy", "project", "faults"}  # what is tested is the whole: the stack, the repository
    assert folders - besides <= packages
    assert not list(tests.glob("test_*.py")), "a test belongs in the folder of the package it tests"
