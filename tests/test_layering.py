"""botkit's floors: every import points down, and the I/O libraries stay on their floors.

The floors, lowest first; a module may import botkit modules of its own floor and of the
floors below it, never above:

    0 ground   botkit.errors, botkit.statuses, botkit.models, botkit.config, botkit.sms,
               botkit.phones, botkit.process
    1 core     botkit.core.*      pure conversation logic and records: no I/O library at all
    2 storage  botkit.storage.*   the store's interfaces, the SQLite engine (sqlite-utils) and
                                  the PostgreSQL engine (asyncpg)
    3 runtime  botkit.runtime.*   engine, composer, renderer (Jinja), sender, timers, assembly
    4 sandbox  botkit.sandbox.*   the fake provider and the web chat (aiohttp)
      console  botkit.console.*   the operator console's pages (aiohttp, aiohttp-session)
    5 web      botkit.web.*       the server, the provider's HTTP client, the guard (aiohttp)
    6 top      botkit.cli.*, botkit.testing
    7 face     botkit (__init__): the public names, loaded lazily; botkit.flows, where bots
               imported ``normalize`` from before the floors (it warns)

Every import counts: at module level, inside functions, and under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import botkit

PACKAGE = Path(botkit.__file__).parent
FLOORS = {
    "errors": 0, "statuses": 0, "models": 0, "config": 0, "sms": 0, "phones": 0, "process": 0,
    "core": 1, "storage": 2, "runtime": 3, "sandbox": 4, "console": 4, "web": 5, "cli": 6,
    "testing": 6, "__init__": 7, "flows": 7,
}
# Third-party libraries a floor must not import (and so neither may any floor below it).
FORBIDDEN = {
    0: {"aiohttp", "sqlite3", "sqlite_utils", "asyncpg", "jinja2"},
    1: {"aiohttp", "sqlite3", "sqlite_utils", "asyncpg", "jinja2"},
    2: {"aiohttp", "jinja2"},
    3: {"aiohttp", "sqlite3", "sqlite_utils", "asyncpg"},
    4: {"sqlite3", "sqlite_utils", "asyncpg"},
}


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py"))


def dotted(path: Path) -> str:
    return ".".join(("botkit", *path.relative_to(PACKAGE).with_suffix("").parts))


def floor(module: str) -> int:
    parts = module.split(".")
    head = parts[1] if len(parts) > 1 else "__init__"
    if head not in FLOORS:
        raise AssertionError(f"{module} is on no floor: add its folder to FLOORS")
    return FLOORS[head]


def imported(path: Path, module: str | None = None) -> set[str]:
    """Every module ``path`` (the module named ``module``, by default its place in the
    package) imports, absolute; relative imports are resolved."""
    me = module or dotted(path)
    package = me.rsplit(".", 1)[0] if path.name != "__init__.py" else me
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            names.add(module)
            if module in ("botkit", *(dotted(p) for p in PACKAGE.rglob("__init__.py"))):
                names |= {f"{module}.{a.name}" for a in node.names}  # from botkit.x import y
    return names


def botkit_modules() -> set[str]:
    return {dotted(p).removesuffix(".__init__") for p in modules()}


def assert_imports_point_down(module: str, path: Path) -> None:
    me = floor(module)
    known = botkit_modules()
    for name in imported(path, module):
        if name.startswith("botkit") and name in known:
            assert floor(name) <= me, (
                f"{module} (floor {me}) imports {name} (floor {floor(name)}): an arrow"
                " pointing up; move the shared part down, or pass it in from above")


@pytest.mark.parametrize("path", modules(), ids=lambda p: dotted(p))
def test_imports_point_down(path: Path) -> None:
    assert_imports_point_down(dotted(path), path)


@pytest.mark.parametrize("path", modules(), ids=lambda p: dotted(p))
def test_io_libraries_stay_on_their_floors(path: Path) -> None:
    forbidden = FORBIDDEN.get(floor(dotted(path)), set())
    found = {n.split(".")[0] for n in imported(path)} & forbidden
    assert not found, f"{dotted(path)} imports {found}"


def test_the_floors_catch_an_arrow_pointing_up(tmp_path: Path) -> None:
    # The check itself: a core module importing the runtime must fail it.
    wrong = tmp_path / "wrong_way.py"
    wrong.write_text("from botkit.runtime.engine import Engine\n")
    with pytest.raises(AssertionError, match="an arrow pointing up"):
        assert_imports_point_down("botkit.core.wrong_way", wrong)
    relative = tmp_path / "relative.py"
    relative.write_text("from ..runtime import engine\n")
    with pytest.raises(AssertionError, match="an arrow pointing up"):
        assert_imports_point_down("botkit.core.relative", relative)


def test_the_public_names_load_no_io_library() -> None:
    # A bot module imports Flow and Turn; that must not load the server's libraries.
    code = ("import sys; from botkit import Flow, Turn; heavy = {'aiohttp', 'sqlite_utils',"
            " 'jinja2', 'pydantic'} & {m.split('.')[0] for m in sys.modules}; print(sorted(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_an_old_import_path_still_works_and_says_where_to_import_from() -> None:
    code = "from botkit.flows import normalize; print(normalize('  Menu  '))"
    run = subprocess.run([sys.executable, "-W", "always", "-c", code], capture_output=True,
                         text=True, check=True)
    assert run.stdout.strip() == "menu"
    assert "botkit.flows moved: import Flow, Delivery and normalize from botkit" in run.stderr


def test_sql_lives_in_storage() -> None:
    for path in modules():
        if floor(dotted(path)) != 2 and dotted(path) != "botkit.testing":
            text = path.read_text()
            assert "SELECT " not in text and "INSERT INTO" not in text, dotted(path)
