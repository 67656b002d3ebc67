"""Print the Markdown table of factscope's public API: one row per name in the five ``__all__`` lists.

Usage::

    .venv/bin/python docs/api_table.py           # print the table
    .venv/bin/python docs/api_table.py --write   # rewrite the block between the README markers

The purpose column is the first line of each docstring; for a constant, the string literal that
follows its assignment in the source (an attribute docstring). `tests/test_docs.py` checks that
README.md holds exactly this output.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import inspect
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

MODULES = ("factscope", "factscope.locate", "factscope.edit", "factscope.probes", "factscope.figures")
ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
START, END = "<!-- api-table:start -->", "<!-- api-table:end -->"


def kind_of(obj: Any) -> str:
    """``"exception"``, ``"class"``, ``"function"`` or ``"constant"``."""
    if inspect.isclass(obj):
        return "exception" if issubclass(obj, BaseException) else "class"
    return "function" if callable(obj) else "constant"


def public_names() -> Iterator[tuple[str, str, Any]]:
    """``(module, name, object)`` for every name in the five ``__all__`` lists, in their order."""
    for modname in MODULES:
        mod = importlib.import_module(modname)
        for name in mod.__all__:
            yield modname, name, getattr(mod, name)


def own_doc(obj: Any) -> str | None:
    """The object's own docstring, dedented (a class's, not one inherited from its base)."""
    doc = obj.__dict__.get("__doc__") if inspect.isclass(obj) else getattr(obj, "__doc__", None)
    return inspect.cleandoc(doc) if doc else None


def constant_doc(modname: str, name: str) -> str | None:
    """The attribute docstring of a constant: the string literal right after its assignment.

    Follows ``from X import name`` in the package's ``__init__`` to the module that assigns it.
    """
    mod = importlib.import_module(modname)
    tree = ast.parse(Path(mod.__file__).read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module and any(a.name == name for a in node.names):
            return constant_doc(node.module, name)
    for node, after in zip(tree.body, tree.body[1:]):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            if isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str):
                return inspect.cleandoc(after.value.value)
            return None
    return None


def doc_of(modname: str, name: str, obj: Any) -> str | None:
    """The docstring of a public name (for a constant, its attribute docstring)."""
    return constant_doc(modname, name) if kind_of(obj) == "constant" else own_doc(obj)


def summary(modname: str, name: str, obj: Any) -> str:
    """The first line of the docstring (empty when there is none)."""
    doc = doc_of(modname, name, obj)
    return doc.splitlines()[0].strip() if doc else ""


def render() -> str:
    """The Markdown table, rows grouped by module in ``MODULES`` order."""
    lines = ["| name | kind | purpose |", "|---|---|---|"]
    for modname, name, obj in public_names():
        purpose = summary(modname, name, obj).replace("|", "\\|")
        lines.append(f"| `{modname}.{name}` | {kind_of(obj)} | {purpose} |")
    return "\n".join(lines) + "\n"


def readme_block(text: str) -> str:
    """What README.md holds between the markers (without them)."""
    if START not in text or END not in text:
        raise ValueError(f"README.md lacks the markers {START} / {END}")
    return text.split(START, 1)[1].split(END, 1)[0]


def write_readme(path: Path = README) -> bool:
    """Rewrite the block between the markers in place; True if the file changed."""
    text = path.read_text(encoding="utf-8")
    old = readme_block(text)
    new = "\n" + render()
    if old == new:
        return False
    head, rest = text.split(START, 1)
    path.write_text(head + START + new + END + rest.split(END, 1)[1], encoding="utf-8")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"rewrite the table in {README.name} in place")
    args = parser.parse_args(argv)
    if args.write:
        changed = write_readme()
        print(f"{README.name}: table {'rewritten' if changed else 'already up to date'}")
    else:
        sys.stdout.write(render())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
