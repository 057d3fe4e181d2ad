"""
The house rules that a reading of the source can check (issue 18).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def trees(folder: str) -> Iterator[tuple[Path, ast.Module]]:
    for path in sorted((ROOT / folder).rglob("*.py")):
        yield path.relative_to(ROOT), ast.parse(path.read_text(), str(path))


def test_every_test_has_a_docstring() -> None:
    """Every test function in tests/ has a docstring saying the behaviour."""
    missing = [
        f"{path}:{node.lineno} {node.name}"
        for path, tree in trees("tests")
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.name.startswith("test")
        and ast.get_docstring(node) is None
    ]
    assert missing == []


def test_no_module_imports_underscored_names() -> None:
    """No module of chat/ imports another module's underscored names."""
    found = [
        f"{path}:{node.lineno} {alias.name}"
        for path, tree in trees("chat")
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module != "__future__"
        for alias in node.names
        if alias.name.startswith("_")
    ]
    assert found == []


def test_only_the_store_speaks_sql() -> None:
    """Only chat/store/ imports the database drivers (sqlite3, psycopg)."""
    drivers = {"sqlite3", "psycopg", "psycopg_pool"}
    found = []
    for path, tree in trees("chat"):
        if path.parts[:2] == ("chat", "store"):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            else:
                continue
            found += [
                f"{path}:{node.lineno} {name}"
                for name in names
                if name.split(".")[0] in drivers
            ]
    assert found == []


def test_documents_are_valid_restructuredtext() -> None:
    """README, CHANGELOG and the other .rst documents parse without a
    warning (a title's underline shorter than the title, say), so they
    render on a package index as written."""
    import docutils.core
    import docutils.utils

    documents = sorted(
        p
        for p in ROOT.rglob("*.rst")
        if not {".venv", "build"} & set(p.relative_to(ROOT).parts)
    )
    assert ROOT / "CHANGELOG.rst" in documents
    problems = []
    for path in documents:
        try:
            docutils.core.publish_doctree(
                path.read_text(),
                source_path=str(path),
                settings_overrides={
                    "report_level": 2,
                    "halt_level": 2,
                    "warning_stream": False,
                },
            )
        except docutils.utils.SystemMessage as e:
            problems.append(f"{path.relative_to(ROOT)}: {e}")
    assert problems == []
