"""Finds the bots: every module-level ``Flow`` in the modules of a folder such as ``bots/``."""

from __future__ import annotations

import importlib
import pkgutil
import sys
import traceback
from pathlib import Path

from botkit.core.flows import Flow
from botkit.errors import DefinitionError

__all__ = ["load_flows"]


def load_flows(folder: str | Path = "bots") -> list[Flow]:
    """Import every module in ``folder`` and return the Flow objects they define.

    A flow name defined in two modules is a DefinitionError naming both; a module that fails
    to import is a DefinitionError with its file and line.

    >>> [flow.name for flow in load_flows("bots")]
    ['support', 'survey']
    """
    path = Path(folder).resolve()
    if not path.is_dir():
        raise DefinitionError(f"bots folder {folder} does not exist (create it, or pass --bots)")
    parent, package = str(path.parent), path.name
    _import_from(parent, package, path)
    found: dict[str, tuple[Flow, str]] = {}
    for info in sorted(pkgutil.iter_modules([str(path)]), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        name = f"{package}.{info.name}"
        try:
            module = importlib.import_module(name)
        except DefinitionError:
            raise
        except Exception as exc:
            frame = traceback.extract_tb(exc.__traceback__)[-1]
            raise DefinitionError(
                f"bot module {name} failed to import: {type(exc).__name__}: {exc}"
                f" ({frame.filename}:{frame.lineno})"
            ) from exc
        for value in vars(module).values():
            if isinstance(value, Flow):
                if value.name in found and found[value.name][0] is not value:
                    raise DefinitionError(
                        f"flow {value.name!r} is defined in both {found[value.name][1]}"
                        f" and {name}; rename one"
                    )
                found[value.name] = (value, name)
    return [flow for flow, _ in found.values()]


def _import_from(parent: str, package: str, path: Path) -> None:
    """Make ``import <package>`` find ``path``, even where another folder of that name
    (the working directory's own ``bots/``) comes first on ``sys.path`` or was imported."""
    if parent in sys.path:
        sys.path.remove(parent)
    sys.path.insert(0, parent)
    loaded = sys.modules.get(package)
    where = [str(Path(p).resolve()) for p in getattr(loaded, "__path__", [])]
    if loaded is not None and str(path) not in where:
        for name in [n for n in sys.modules if n == package or n.startswith(package + ".")]:
            del sys.modules[name]
