"""The public API documents itself: every name in the five ``__all__`` lists has a docstring with a
one-line summary, its parameters under ``Args:`` (or fields under ``Attributes:``), and a ``Cost``;
and the README's table of public functions is the output of ``docs/api_table.py``. No model needed.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load_api_table():
    spec = importlib.util.spec_from_file_location("api_table", ROOT / "docs" / "api_table.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


api = _load_api_table()
PUBLIC = list(api.public_names())
CALLABLES = [(f"{m}.{n}", o) for m, n, o in PUBLIC if callable(o)]
CONSTANTS = [(m, n) for m, n, o in PUBLIC if not callable(o)]
CLASSES = [(f"{m}.{n}", o) for m, n, o in PUBLIC if inspect.isclass(o)]
METHODS = [(f"{q}.{name}", attr) for q, cls in CLASSES for name, attr in vars(cls).items()
           if not name.startswith("_")
           and (inspect.isfunction(attr) or isinstance(attr, (property, classmethod, staticmethod)))]
SECTIONS = ("Args", "Attributes")
MAX_SUMMARY = 100


def _section(doc: str, names: tuple[str, ...] = SECTIONS) -> str:
    """The text of the docstring's ``Args:`` / ``Attributes:`` sections (indented lines after the header)."""
    out, indent = [], None
    for line in doc.splitlines():
        stripped = line.strip()
        if indent is not None and stripped and len(line) - len(line.lstrip()) <= indent:
            indent = None
        if indent is None and stripped.rstrip(":") in names and stripped.endswith(":"):
            indent = len(line) - len(line.lstrip())
            continue
        if indent is not None:
            out.append(line)
    return "\n".join(out)


def _mentions(text: str, name: str) -> bool:
    return re.search(rf"(?<![\w.]){re.escape(name)}(?!\w)", text) is not None


def _params(obj) -> list[str]:
    """Parameter names a caller passes (no self/cls, *args or **kwargs)."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return []
    return [p.name for p in sig.parameters.values()
            if p.name not in ("self", "cls") and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def _undocumented(obj, doc: str) -> list[str]:
    """Parameters not named in ``doc``'s Args/Attributes sections. A dataclass field inherited from
    another dataclass may be documented on the class that declares it instead."""
    missing = []
    for p in _params(obj):
        if _mentions(_section(doc), p):
            continue
        if inspect.isclass(obj) and dataclasses.is_dataclass(obj):
            owners = [c for c in obj.__mro__[1:] if p in inspect.get_annotations(c)]
            if owners and _mentions(_section(api.own_doc(owners[0]) or ""), p):
                continue
        missing.append(p)
    return missing


def _check_summary(qualname: str, doc: str) -> None:
    lines = doc.splitlines()
    assert lines[0].strip(), f"{qualname}: the docstring must start with a one-line summary"
    assert len(lines) == 1 or not lines[1].strip(), \
        f"{qualname}: the summary must fit on the first line, followed by a blank line"
    assert len(lines[0]) <= MAX_SUMMARY, \
        f"{qualname}: summary is {len(lines[0])} characters (at most {MAX_SUMMARY}; it becomes the README table)"


@pytest.mark.parametrize("qualname, obj", CALLABLES, ids=[q for q, _ in CALLABLES])
def test_public_callable_is_documented(qualname, obj):
    doc = api.own_doc(obj)
    assert doc, f"{qualname} has no docstring"
    _check_summary(qualname, doc)
    if inspect.isclass(obj) and "__init__" in vars(obj) and not dataclasses.is_dataclass(obj):
        doc += "\n" + (api.own_doc(obj.__init__) or "")  # a class's constructor may document its own Args
    missing = _undocumented(obj, doc)
    assert not missing, f"{qualname}: parameters {missing} are not documented in an Args:/Attributes: section"
    if not (inspect.isclass(obj) and issubclass(obj, BaseException)):
        assert "Cost" in doc, f"{qualname}: the docstring must say what it costs (a 'Cost:' line)"


@pytest.mark.parametrize("qualname, attr", METHODS, ids=[q for q, _ in METHODS])
def test_public_method_is_documented(qualname, attr):
    func = attr.fget if isinstance(attr, property) else getattr(attr, "__func__", attr)
    doc = api.own_doc(func)
    assert doc, f"{qualname} has no docstring"
    _check_summary(qualname, doc)
    missing = _undocumented(func, doc)
    assert not missing, f"{qualname}: parameters {missing} are not documented in an Args: section"


@pytest.mark.parametrize("module, name", CONSTANTS, ids=[f"{m}.{n}" for m, n in CONSTANTS])
def test_public_constant_is_documented(module, name):
    doc = api.constant_doc(module, name)
    assert doc, f"{module}.{name}: put a docstring (a string literal) on the line after its assignment"
    _check_summary(f"{module}.{name}", doc)


def test_checks_can_fail():
    """The checks catch an undocumented parameter, a missing Cost and a summary that runs on."""

    def f(model, layer: int = 0):
        """Do a thing.

        Args:
            model: a bridge.

        Cost: negligible.
        """

    assert _undocumented(f, api.own_doc(f)) == ["layer"]
    f.__doc__ = "Do a thing\nthat runs on.\n\nArgs:\n    model: a bridge.\n    layer: which.\n"
    assert _undocumented(f, api.own_doc(f)) == []
    with pytest.raises(AssertionError, match="first line"):
        _check_summary("f", api.own_doc(f))
    f.__doc__ = "Do a thing.\n\nArgs:\n    model: a bridge.\n    layer: which.\n"
    with pytest.raises(AssertionError, match="Cost"):
        test_public_callable_is_documented("f", f)


def test_readme_table_is_current():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert api.readme_block(readme).strip() == api.render().strip(), (
        "README.md's table of public functions is out of date: regenerate it with "
        "`.venv/bin/python docs/api_table.py --write`")
