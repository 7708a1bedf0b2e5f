"""The import layering of STYLE.md: pure core modules never import I/O libraries."""

from __future__ import annotations

import ast
from pathlib import Path

import botkit

PACKAGE = Path(botkit.__file__).parent
PURE = {"errors", "models", "config", "flows", "turn", "routing", "conversation", "store",
        "dispatch"}
AIOHTTP_ALLOWED = {"server", "client", "testing", "cli", "guard"}
LIBRARIES = {"aiohttp", "sqlite_utils", "jinja2", "sqlite3"}


def imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_pure_modules_import_no_io_library():
    for name in PURE:
        found = imports(PACKAGE / f"{name}.py") & LIBRARIES
        assert not found, f"botkit/{name}.py imports {found}"


def test_only_the_edge_imports_aiohttp():
    for path in PACKAGE.glob("*.py"):
        if "aiohttp" in imports(path):
            assert path.stem in AIOHTTP_ALLOWED, f"{path.name} imports aiohttp"


def test_sql_lives_in_the_store():
    for path in PACKAGE.glob("*.py"):
        if path.stem in {"sqlite_store", "schema", "testing"}:
            continue
        text = path.read_text()
        assert "SELECT " not in text and "INSERT INTO" not in text, f"SQL in {path.name}"
