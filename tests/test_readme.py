"""The README's quickstart runs as written on the default model (so it cannot rot)."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402

README = Path(__file__).resolve().parents[1] / "README.md"


def _quickstart() -> str:
    text = README.read_text(encoding="utf-8")
    m = re.search(r"## Quickstart\n+```python\n(.*?)```", text, re.S)
    assert m, "README.md has no '## Quickstart' section with a python block"
    return m.group(1)


def test_quickstart_is_five_lines():
    assert len([line for line in _quickstart().splitlines() if line.strip()]) == 5


@pytest.mark.slow
def test_quickstart_runs_and_its_edit_is_reverted(capsys):
    import factscope as fs

    ns: dict = {}
    exec(compile(_quickstart(), "README.md#quickstart", "exec"), ns)
    out = capsys.readouterr().out
    assert "efficacy" in out and "neighbourhood" in out  # the printed EditReport
    fact, model = ns["fact"], ns["model"]
    p = fs.predict(model, [fact.text], [fact.target_true])[0]
    assert p.correct  # evaluate applied the edit only inside its context: the model still says Paris
