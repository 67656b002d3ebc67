"""One self-contained HTML report: figures, tables, text and circuitsvis views in a single offline file.

    from factscope.figures import Figure, Table, Text, Html, Section, write_report

    sections = [Section(title="Causal trace", intro="Restoring the subject's MLPs ...",
                        blocks=[Figure(path="out/trace.png", caption="Indirect effect per token and layer"),
                                Table(frame=result.to_dataframe(), caption="Peak effects")])]
    write_report("out/report.html", title="factscope demo", sections=sections,
                 settings={"model": "gemma-3-270m", "samples": 10}, summary=["ROME: ES 1.00, NS 0.00"])

Everything the page needs is inside it: PNG figures are inlined as ``data:image/png;base64`` URIs,
the stylesheet is inline, and a circuitsvis view is embedded through its ``.local_src`` (the
JavaScript bundle inlined, the bulk of such a page: its size is in docs/guide.md), so the file opens from disk with no network and nothing is
fetched from a CDN. `remote_urls` lists any resource a page would load from elsewhere (the tests
require it to be empty).

Each block renders with a caption: every figure is a ``<figure>`` with a ``<figcaption>``, and
every table a ``<table>`` with a ``<caption>``. Long tables can be folded (``collapsed=True``).
"""

from __future__ import annotations

import base64
import html
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Figure", "Table", "Text", "Html", "Section", "render_report", "write_report", "remote_urls"]


@dataclass(frozen=True, kw_only=True)
class Figure:
    """A PNG figure, inlined as a data URI, with its caption.

    Attributes:
        path: the PNG file (e.g. written by `save_figure`).
        caption: what the figure shows (required: a figure without one does not pass review).
        alt: alternative text; default: the caption.

    Cost: negligible until rendered (then the PNG is read and base64-encoded).
    """

    path: str | Path
    caption: str
    alt: str | None = None

    def render(self) -> str:
        """The ``<figure>`` element, the PNG read from disk and base64-encoded.

        Shown at half its pixel width (the figures are saved at 200 dpi, so text appears at its printed
        size), never wider than the page.

        Cost: reads the file; the page grows by 4/3 of its size.
        """
        p = Path(self.path)
        if p.suffix.lower() != ".png":
            raise ValueError(f"expected a .png figure, got {str(p)!r}")
        raw = p.read_bytes()
        if raw[:8] != b"\x89PNG\r\n\x1a\n":
            raise ValueError(f"expected a PNG file at {str(p)!r}, but it does not start with the PNG signature")
        width = int.from_bytes(raw[16:20], "big")  # IHDR; shown at half its pixels (figures are saved at 200 dpi)
        data = base64.b64encode(raw).decode("ascii")
        alt = html.escape(self.alt or self.caption, quote=True)
        return (f"<figure><img alt=\"{alt}\" style=\"width:{(width + 1) // 2}px\" src=\"data:image/png;base64,{data}\">"
                f"<figcaption>{_inline(self.caption)}</figcaption></figure>")


@dataclass(frozen=True, kw_only=True)
class Table:
    """A pandas DataFrame as an HTML table with a caption.

    Attributes:
        frame: the DataFrame (its index is shown when ``index``).
        caption: what the rows and columns are.
        index: show the index as the first column (default False).
        digits: significant digits for floats (default 3).
        collapsed: fold the table under its caption (for long tables; default False).

    Cost: negligible (plain data).
    """

    frame: Any
    caption: str
    index: bool = False
    digits: int = 3
    collapsed: bool = False

    def render(self) -> str:
        """The ``<table>`` (inside ``<details>`` when collapsed): numbers right-aligned, text left-aligned.

        Cost: negligible (formats the frame's cells).
        """
        df = self.frame.reset_index() if self.index else self.frame
        num = [_numeric(df[c]) for c in df.columns]
        head = "".join(f"<th class='{'num' if n else 'txt'}'>{html.escape(str(c))}</th>" for c, n in zip(df.columns, num, strict=True))
        rows = "".join("<tr>" + "".join(f"<td class='{'num' if n else 'txt'}'>{_cell(v, self.digits)}</td>"
                                        for v, n in zip(r, num, strict=True)) + "</tr>" for r in df.itertuples(index=False))
        n = len(df)
        cap = f"{_inline(self.caption)} <span class='n'>({n} row{'s' if n != 1 else ''})</span>"
        body = f"<table class='data'><caption>{cap}</caption><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
        if self.collapsed:
            return f"<details><summary>{cap}</summary><div class='scroll'>{body}</div></details>"
        return f"<div class='scroll'>{body}</div>"


def _numeric(col: Any) -> bool:
    import pandas as pd

    return bool(pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col))


def _cell(v: Any, digits: int) -> str:
    """One cell: floats to ``digits`` significant digits, NaN/None as –, the rest as escaped text."""
    import math

    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, float) or (hasattr(v, "dtype") and getattr(v.dtype, "kind", "") == "f"):
        f = float(v)
        return "–" if math.isnan(f) else f"{f:.{digits}g}"
    return html.escape(str(v))


@dataclass(frozen=True, kw_only=True)
class Text:
    """Preformatted text (a printed table or log excerpt) under a caption.

    Attributes:
        text: the text, shown verbatim in a monospace block.
        caption: what it is.

    Cost: negligible (plain data).
    """

    text: str
    caption: str

    def render(self) -> str:
        """The captioned ``<pre>`` block.

        Cost: negligible.
        """
        return (f"<figure class='text'><figcaption>{_inline(self.caption)}</figcaption>"
                f"<pre>{html.escape(self.text)}</pre></figure>")


@dataclass(frozen=True, kw_only=True)
class Html:
    """A trusted HTML fragment, such as a circuitsvis view's ``.local_src``, under a caption.

    Attributes:
        fragment: the HTML, inserted as it is (not escaped: pass only HTML you produced).
        caption: what it shows and how to use it.

    Cost: negligible (plain data).
    """

    fragment: str
    caption: str

    def render(self) -> str:
        """The fragment inside a captioned ``<figure>``.

        Cost: negligible (a circuitsvis view adds its inlined JavaScript bundle to the page, once).
        """
        return (f"<figure class='html'><figcaption>{_inline(self.caption)}</figcaption>"
                f"<div class='view'>{self.fragment}</div></figure>")


Block = Figure | Table | Text | Html  # what a Section holds


@dataclass(frozen=True, kw_only=True)
class Section:
    """A titled part of the report: an introduction and its blocks.

    Attributes:
        title: the heading (also the table-of-contents entry).
        blocks: the figures, tables, texts and views, in order.
        intro: a paragraph saying what was run and what to look for (``**bold**`` and ```code``` allowed).
        anchor: the id used in links; default: derived from the title.

    Cost: negligible (plain data).
    """

    title: str
    blocks: Sequence[Block] = field(default_factory=tuple)
    intro: str = ""
    anchor: str | None = None

    @property
    def id(self) -> str:
        """The section's HTML id."""
        return self.anchor or re.sub(r"[^a-z0-9]+", "-", self.title.lower()).strip("-") or "section"

    def render(self) -> str:
        """The ``<section>`` with its heading, introduction and blocks.

        Cost: that of its blocks.
        """
        intro = f"<p>{_inline(self.intro)}</p>" if self.intro else ""
        return (f"<section id='{self.id}'><h2>{html.escape(self.title)}</h2>{intro}"
                + "".join(b.render() for b in self.blocks) + "</section>")


def _inline(text: str) -> str:
    """Escape ``text``, then allow ``**bold**`` and ```code``` (the only markup captions use)."""
    s = html.escape(text)
    s = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", s)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", s)


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:0;color:#1a1a1a;
  background:#fafafa;line-height:1.45}
main{max-width:1100px;margin:0 auto;padding:1.5rem 2rem 4rem;background:#fff}
h1{font-size:1.7rem;margin:.2rem 0}h2{font-size:1.3rem;border-bottom:2px solid #08519c;padding-bottom:.2rem;
  margin-top:2.4rem}
.sub{color:#555;margin:.2rem 0 1rem}
nav ul{columns:2;font-size:.95rem;list-style:none;padding-left:1rem}nav a{color:#08519c;text-decoration:none}
.summary{background:#f0f5fb;border-left:4px solid #08519c;padding:.6rem 1rem;margin:1rem 0}
.summary li{margin:.2rem 0}
figure{margin:1.2rem 0}figure img{max-width:100%;height:auto;border:1px solid #ddd}
figcaption{font-size:.9rem;color:#333;margin:.3rem 0}
pre{background:#f6f6f6;border:1px solid #e2e2e2;padding:.6rem;overflow-x:auto;font-size:.78rem;line-height:1.3}
.scroll{overflow-x:auto;margin:1rem 0}
table.data{border-collapse:collapse;font-size:.8rem;font-variant-numeric:tabular-nums}
table.data caption{caption-side:top;text-align:left;font-size:.9rem;color:#333;padding:.3rem 0}
table.data th,table.data td{padding:.2rem .5rem;border-bottom:1px solid #e6e6e6;text-align:right}
table.data th{background:#f0f0f0;position:sticky;top:0}
table.data .txt{text-align:left}
table.data tr:nth-child(even) td{background:#fbfbfb}
details summary{cursor:pointer;font-size:.9rem;color:#08519c;margin:.6rem 0}
.n{color:#777;font-size:.8rem}
.view{border:1px solid #ddd;padding:.5rem;overflow-x:auto}
code{background:#f3f3f3;padding:0 .2rem;border-radius:3px}
"""


def render_report(*, title: str, sections: Sequence[Section], settings: Mapping[str, Any] | None = None,
                  summary: Sequence[str] = (), subtitle: str = "") -> str:
    """The report as one HTML string: title, summary, contents, sections, then the settings.

    Args:
        title: the page title and top heading.
        sections: the `Section` s, in order.
        settings: everything that determined the results (model, seeds, constants, versions, timings);
            shown as a table at the end. Values are printed with ``str``; dicts and lists as JSON.
        summary: short lines shown at the top (``**bold**`` and ```code``` allowed).
        subtitle: a line under the title (e.g. the model and the date).

    Returns:
        The HTML document.

    Cost: reads each figure's PNG; the page is the sum of its figures (4/3 size) and views.
    """
    ids = [s.id for s in sections] + (["settings"] if settings else [])
    if len(set(ids)) != len(ids):
        raise ValueError(f"expected sections with distinct ids (set `anchor=`), got {ids}")
    nav = "".join(f"<li><a href='#{s.id}'>{html.escape(s.title)}</a></li>" for s in sections)
    summ = ("<div class='summary'><strong>Summary</strong><ul>" + "".join(f"<li>{_inline(x)}</li>" for x in summary)
            + "</ul></div>") if summary else ""
    body = "".join(s.render() for s in sections)
    if settings:
        rows = "".join(f"<tr><td class='txt'>{html.escape(str(k))}</td><td class='txt'><code>{html.escape(_value(v))}"
                       f"</code></td></tr>" for k, v in settings.items())
        body += ("<section id='settings'><h2>Settings</h2><div class='scroll'><table class='data settings'>"
                 "<caption>Everything that determined these results</caption>"
                 f"<thead><tr><th class='txt'>setting</th><th class='txt'>value</th></tr></thead><tbody>{rows}</tbody></table></div></section>")
        nav += "<li><a href='#settings'>Settings</a></li>"
    sub = f"<p class='sub'>{_inline(subtitle)}</p>" if subtitle else ""
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body><main>"
            f"<h1>{html.escape(title)}</h1>{sub}{summ}<nav><strong>Contents</strong><ul>{nav}</ul></nav>"
            f"{body}</main></body></html>")


def _value(v: Any) -> str:
    if isinstance(v, (dict, list, tuple)):
        return json.dumps(v, default=str, ensure_ascii=False)
    return str(v)


def write_report(path: str | Path, *, title: str, sections: Sequence[Section],
                 settings: Mapping[str, Any] | None = None, summary: Sequence[str] = (), subtitle: str = "") -> Path:
    """Write `render_report` to ``path`` atomically (UTF-8) and return the path.

    Args:
        path: the ``.html`` file to write; its folder is created.
        title, sections, settings, summary, subtitle: as in `render_report`.

    Raises:
        ValueError: the page would load a remote resource (see `remote_urls`).

    Cost: as `render_report`, plus one file write.
    """
    from factscope.cache import atomic_file

    page = render_report(title=title, sections=sections, settings=settings, summary=summary, subtitle=subtitle)
    remote = remote_urls(page)
    if remote:
        raise ValueError(f"expected a self-contained page, but it would load remote resources: {remote[:5]}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    path.chmod(0o644)  # readable like any written file (the atomic temporary file is private)
    return path


# A resource the browser would fetch: src=/href=/srcset=/data= attributes, CSS url() and @import, and
# JavaScript module imports (`import ... from "..."`, `import("...")`: circuitsvis' cdn_src), pointing at
# http(s): or protocol-relative //.
_REMOTE = re.compile(r"""(?:\b(?:src|href|srcset|data)\s*=\s*["']?|url\(\s*["']?|@import\s+["']?"""
                     r"""|\bfrom\s*["']|\bimport\s*\(?\s*["'])\s*((?:https?:)?//[^\s"')>]+)""", re.IGNORECASE)


def remote_urls(page: str) -> list[str]:
    """The URLs a page would load from elsewhere; empty for a self-contained page.

    Looks at ``src``/``href``/``srcset``/``data`` attributes, CSS ``url(...)`` and ``@import``, and
    JavaScript module imports (``from "..."``, ``import("...")``) that point at ``http(s)://`` or ``//``.

    URLs that only appear as text (such as the links in the error messages inside circuitsvis'
    JavaScript) are not loaded and are not reported.

    Args:
        page: the HTML.

    Cost: one regular-expression scan of the page.
    """
    return _REMOTE.findall(page)
