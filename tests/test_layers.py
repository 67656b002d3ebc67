"""The house's blueprint: which folder holds what, and which way imports run.

Layers, lowest first (a module may import from its own layer and the ones below, never above)::

    core     factscope/   models, facts, tokens, the architecture adapter, caches, result files
    locate   locate/      causal tracing, layer profiles, knowledge neurons
    edit     edit/        ROME, MEMIT, AlphaEdit, KN, FT-L, the Edit handle, the editor registry
    probes   probes/      evaluation, spillover, localization vs editing, neuron probes
    figures  figures/     plots and the offline HTML report
    app      app/         the CLI and the demo: programs that use the library

The checks parse the source (every ``import``, at module level or inside a function) rather than
importing it, so they see what tools see and cannot be fooled by lazy imports.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("core", "locate", "edit", "probes", "figures", "app")
FOLDERS = {"factscope": "core", "locate": "locate", "edit": "edit", "probes": "probes", "figures": "figures",
           "app": "app"}


def layer_of(module: str) -> str | None:
    """The layer of a dotted module name, or ``None`` for a module outside factscope."""
    parts = module.split(".")
    if parts[0] != "factscope":
        return None
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS[1:] else "core"


def imports_of(source: str, module: str) -> list[tuple[int, str, list[str]]]:
    """``(line, imported module, imported names)`` for every factscope import in ``source``."""
    out = []
    package = module if module.endswith("__init__") else module.rsplit(".", 1)[0]
    package = package.removesuffix(".__init__")
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name, []) for a in node.names if a.name.split(".")[0] == "factscope"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import: resolve against the importing package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if name.split(".")[0] == "factscope":
                out.append((node.lineno, name, [a.name for a in node.names]))
    return out


def library_modules() -> list[tuple[Path, str]]:
    """Every module of the installed layout as ``(file, dotted name)``."""
    mods = []
    for folder, layer in FOLDERS.items():
        pkg = "factscope" if layer == "core" else f"factscope.{layer}"
        for f in sorted((ROOT / folder).rglob("*.py")):
            rel = f.relative_to(ROOT / folder).with_suffix("")
            mods.append((f, ".".join([pkg, *rel.parts])))
    return mods


def layer_violations(source: str, module: str) -> list[str]:
    """The imports in ``source`` (the module ``module``) that reach up to a higher layer."""
    mine = LAYERS.index(layer_of(module))
    bad = []
    for line, name, _ in imports_of(source, module):
        theirs = layer_of(name)
        # `from factscope import edit` names a sub-package through the core's namespace
        if name == "factscope":
            for n in _:
                if n in LAYERS[1:] and LAYERS.index(n) > mine:
                    bad.append(f"{module}:{line} imports factscope.{n} ({n} is above {LAYERS[mine]})")
        elif LAYERS.index(theirs) > mine:
            bad.append(f"{module}:{line} imports {name} ({theirs} is above {LAYERS[mine]})")
    return bad


def private_imports(source: str, module: str) -> list[str]:
    """Private names (``_x``) that ``source`` imports from another module."""
    bad = []
    for line, name, names in imports_of(source, module):
        if name == module.removesuffix(".__init__"):
            continue
        bad += [f"{module}:{line} imports {name}.{n}" for n in names if n.startswith("_")]
        bad += [f"{module}:{line} imports {name}" for part in name.split(".") if part.startswith("_")]
    return bad


def test_every_folder_is_a_layer():
    assert (ROOT / "app" / "__init__.py").exists()
    mods = library_modules()
    assert {layer_of(m) for _, m in mods} == set(LAYERS)
    assert len(mods) > 40


def test_imports_run_one_way():
    bad = [v for f, m in library_modules() for v in layer_violations(f.read_text(encoding="utf-8"), m)]
    assert bad == [], "imports that reach up a layer:\n" + "\n".join(bad)


def test_no_private_name_crosses_modules():
    files = library_modules() + [(f, f"benchmarks.{f.stem}") for f in sorted((ROOT / "benchmarks").glob("*.py"))]
    bad = [v for f, m in files for v in private_imports(f.read_text(encoding="utf-8"), m)]
    assert bad == [], "private names imported across modules:\n" + "\n".join(bad)


@pytest.mark.parametrize("source, module, n_bad", [
    ("from factscope.edit import rome", "factscope.locate.tracing", 1),             # locate reaching up to edit
    ("def f():\n    from factscope.app.cli import app", "factscope.models", 1),    # a lazy import counts too
    ("from factscope import probes", "factscope.edit.rome", 1),                     # through the core's namespace
    ("from .. import figures", "factscope.probes.spillover", 1),                    # relative
    ("import factscope.figures.html", "factscope.tokens", 1),
    ("from factscope.arch import arch_of\nfrom factscope.edit import Edit", "factscope.probes.evaluate", 0),
    ("from factscope.probes import evaluate", "factscope.app.demo", 0),
])
def test_the_layer_check_can_fail(source, module, n_bad):
    assert len(layer_violations(source, module)) == n_bad


@pytest.mark.parametrize("source, module, n_bad", [
    ("from factscope.edit.memit import _stats, run_layers", "factscope.edit.alphaedit", 1),
    ("def f():\n    from factscope.models import _notice as notice", "factscope.edit.covariance", 1),
    ("from factscope.edit.memit import _stats", "factscope.edit.memit", 0),          # its own name
    ("from factscope.tokens import encode, subject_span", "factscope.edit.rome", 0),
])
def test_the_private_check_can_fail(source, module, n_bad):
    assert len(private_imports(source, module)) == n_bad
