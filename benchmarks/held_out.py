"""Issue 18's quality targets, checked on a held-out `EditReport` (shared by bench_rome.py and bench_memit.py).

The targets: ES >= 0.95, PS >= 0.85, NS >= 0.85 (`factscope.edit.layer_choice.TARGETS`), neighbour KL
<= 0.5 nats, and fluency change >= -0.3 bits (CounterFact's generation entropy, post − pre). Each is
printed with its 95% bootstrap CI over requests (`EditReport.summary`) and whether it is met.
"""

from __future__ import annotations

FLUENCY_DROP = -0.3  # bits: the smallest fluency change allowed


def check_targets(report, label: str) -> dict[str, float]:
    """Print each target's value, CI and verdict for ``report``; return the values."""
    from factscope.edit.layer_choice import TARGETS
    from factscope.probes.stats import format_ci

    s = report.summary()
    rows = [(k, "post", ">=", t) if k != "neighbourhood_kl" else (k, "post", "<=", t) for k, t in TARGETS.items()]
    rows.append(("fluency", "delta", ">=", FLUENCY_DROP))
    out = {}
    print(f"{label}: {len(report.requests)} held-out requests")
    for metric, col, op, t in rows:
        v, lo, hi = (float(s.loc[metric, c]) for c in (col, f"{col}_lo", f"{col}_hi"))
        ok = v >= t if op == ">=" else v <= t
        name = metric + (" change" if col == "delta" else "")
        print(f"  {name:<18} {format_ci(v, lo, hi, fmt='.3f')}   target {op} {t:g}: {'met' if ok else 'NOT met'}")
        out[name] = v
    return out
