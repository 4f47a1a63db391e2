"""Load a user's object by name: "module:function", "module:Class" or "module:Class(arg=value, ...)".

Losses and model builders are named this way in experiment files. A module beside the experiment
file is found without PYTHONPATH: the file's folder is searched after the usual places.
"""
from __future__ import annotations

import ast
import functools
import importlib
import inspect
import sys
from pathlib import Path

from harness.errors import ConfigError


def parse_spec(spec: str) -> tuple[str, str, dict]:
    """"pkg.mod:Name(a=1, b='x')" -> ("pkg.mod", "Name", {"a": 1, "b": "x"}); arguments are literals."""
    module_name, sep, rest = spec.partition(":")
    if not sep or not module_name or not rest:
        raise ConfigError(f"{spec!r}: expected module:name or module:Name(arg=value)")
    try:
        node = ast.parse(rest.strip(), mode="eval").body
    except SyntaxError:
        raise ConfigError(f"{spec!r}: cannot read {rest!r} as a name or a call") from None
    if isinstance(node, ast.Name):
        return module_name, node.id, {}
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.args:
        try:
            kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords if k.arg}
        except ValueError:
            raise ConfigError(f"{spec!r}: arguments must be literal values (numbers, strings, lists)") from None
        if len(kwargs) != len(node.keywords):
            raise ConfigError(f"{spec!r}: arguments must be given by name")
        return module_name, node.func.id, kwargs
    raise ConfigError(f"{spec!r}: expected module:name or module:Name(arg=value) with named literal arguments")


def load_object(spec: str, search_dir: str | Path | None = None, what: str = "object"):
    """The named object; a class is instantiated with the given arguments, a function given
    arguments is bound to them. -> (object, the underlying function or class)."""
    module_name, name, kwargs = parse_spec(spec)
    if search_dir and str(search_dir) not in sys.path:
        sys.path.append(str(search_dir))       # after the usual places: never shadows an installed module
    try:
        found = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"cannot load {what} {spec!r}: {e}") from None
    if inspect.isclass(found):
        try:
            return found(**kwargs), found
        except TypeError as e:
            raise ConfigError(f"cannot create {what} {spec!r}: {e}") from None
    if not callable(found):
        raise ConfigError(f"{what} {spec!r} is not callable")
    return (functools.partial(found, **kwargs) if kwargs else found), found
