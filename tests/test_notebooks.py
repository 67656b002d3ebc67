"""The notebooks in ``notebooks/`` run top to bottom, and are stored without outputs.

The execution tests are ``slow``: each notebook loads the real default model (Gemma 3 270M) in a fresh
kernel and runs every cell; any cell that raises (the notebooks assert their own invariants) fails
the test. The kernel is the Python running pytest: a ``python3`` kernelspec pointing at
``sys.executable`` is written to a temporary directory that ``JUPYTER_PATH`` puts first, so a
``python3`` kernelspec elsewhere (user or system) cannot swap in another interpreter; a first cell
added in memory checks that the kernel's ``sys.prefix`` is ours.

Each notebook runs with smaller parameters than it ships with (``TEST_PARAMETERS``: fewer noise samples,
shorter generations), set by a cell added in memory right after its ``# ---- parameters`` cell: the
same code paths and the notebook's own checks, in less time. A notebook without that cell fails.

The fast tests check that every ``.ipynb`` in the folder is listed in ``NOTEBOOKS`` (so a new
notebook cannot go unexecuted) and is stored clean: valid nbformat 4, no outputs, no execution counts.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = [
    "01_where_is_this_fact.ipynb",
    "02_edit_and_evaluate.ipynb",
    "03_locality_hypothesis.ipynb",
]
# Per cell. Warm caches: each notebook takes a few minutes in all. Cold caches add the model conversion
# (~1 min), the layer profile (~3 min) and key statistics (minutes per layer) to single cells.
CELL_TIMEOUT = 1800
# What each notebook's test run overrides (its parameter cell's names; the notebook's defaults are for readers).
TEST_PARAMETERS = {
    "01_where_is_this_fact.ipynb": "SAMPLES = 3",
    "02_edit_and_evaluate.ipynb": "N_GEN_TOKENS = 10",
    "03_locality_hypothesis.ipynb": "LOC_SAMPLES = 3",
}
PARAMETERS_CELL = "# ---- parameters"
KERNEL = "python3"
_CHECK_KERNEL = "import sys\nprint(sys.prefix)"


def _on_disk() -> list[str]:
    return sorted(p.name for p in NOTEBOOK_DIR.glob("*.ipynb"))


def parameters_cell(nb, name: str) -> int:
    """The index of ``nb``'s one parameters cell, after checking it sets every name ``TEST_PARAMETERS`` overrides."""
    at = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and c.source.startswith(PARAMETERS_CELL)]
    assert len(at) == 1, f"{name}: expected one code cell starting {PARAMETERS_CELL!r}, found {len(at)}"
    for line in TEST_PARAMETERS[name].splitlines():  # override only names the notebook sets
        assert f"\n{line.split('=')[0].strip()} =" in nb.cells[at[0]].source, f"{name}: its parameters cell has no {line!r}"
    return at[0]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_test_parameters_override_the_parameters_cell(name):
    nbformat = pytest.importorskip("nbformat")
    parameters_cell(nbformat.read(NOTEBOOK_DIR / name, as_version=4), name)


def test_every_notebook_is_executed():
    on_disk = _on_disk()
    assert on_disk, f"no notebooks found in {NOTEBOOK_DIR}"
    assert sorted(NOTEBOOKS) == on_disk, (
        f"NOTEBOOKS in {Path(__file__).name} must list exactly the notebooks in {NOTEBOOK_DIR}: "
        f"missing {sorted(set(on_disk) - set(NOTEBOOKS))}, listed but absent {sorted(set(NOTEBOOKS) - set(on_disk))}")


@pytest.mark.parametrize("name", _on_disk())
def test_notebook_is_stored_without_outputs(name):
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(NOTEBOOK_DIR / name, as_version=nbformat.NO_CONVERT)
    assert nb.nbformat == 4, f"{name}: expected nbformat 4, got {nb.nbformat}"
    nbformat.validate(nb)
    assert nb.metadata.get("kernelspec", {}).get("name") == KERNEL, f"{name}: expected the {KERNEL!r} kernel"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, f"{name} has no code cells"
    dirty = [i for i, c in enumerate(nb.cells)
             if c.cell_type == "code" and (c.outputs != [] or c.execution_count is not None)]
    assert not dirty, (f"{name}: cells {dirty} have outputs or execution counts; clear them "
                       f"(e.g. `jupyter nbconvert --clear-output --inplace notebooks/{name}`)")


@pytest.fixture
def venv_kernel(tmp_path, monkeypatch):
    """A ``python3`` kernelspec running ``sys.executable``, found before any other."""
    spec = tmp_path / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": f"Python 3 ({sys.prefix})", "language": "python",
    }))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    from jupyter_client.kernelspec import KernelSpecManager

    resolved = KernelSpecManager().get_kernel_spec(KERNEL)
    assert resolved.argv[0] == sys.executable, f"the {KERNEL!r} kernel resolves to {resolved.argv}"
    return KERNEL


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs(name, tmp_path, venv_kernel):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
    nb.cells.insert(parameters_cell(nb, name) + 1, nbformat.v4.new_code_cell(TEST_PARAMETERS[name]))
    nb.cells.insert(0, nbformat.v4.new_code_cell(_CHECK_KERNEL))
    work = tmp_path / "cwd"  # the kernel's working directory: anything a notebook writes stays in tmp
    work.mkdir()
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name=venv_kernel,
                                     resources={"metadata": {"path": str(work)}})
    executed = tmp_path / name
    start = time.perf_counter()
    try:
        client.execute()
    except CellExecutionError as e:
        pytest.fail(f"{name} failed after {time.perf_counter() - start:.0f} s (cell numbers count the added kernel "
                    f"check; executed copy: {executed}):\n{e}", pytrace=False)
    finally:
        nbformat.write(nb, executed)
    seconds = time.perf_counter() - start
    print(f"{name}: {seconds:.0f} s")

    prefix = "".join(o.get("text", "") for o in nb.cells[0].outputs if o.output_type == "stream").strip()
    assert Path(prefix).resolve() == Path(sys.prefix).resolve(), (
        f"the notebook ran in {prefix!r}, not in this interpreter's environment {sys.prefix!r}")
    errors = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"
              for o in c.outputs if o.output_type == "error"]
    assert not errors, f"{name}: cells {errors} produced errors (executed copy: {executed})"
    unexecuted = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and c.execution_count is None]
    assert not unexecuted, f"{name}: cells {unexecuted} did not run"
