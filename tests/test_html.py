"""The offline HTML report (`factscope.figures.html`): structure, escaping, inlining, no remote resources."""

from __future__ import annotations

import base64
import re
from html.parser import HTMLParser

import matplotlib

matplotlib.use("Agg")

import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from factscope.figures import Figure, Html, Section, Table, Text, remote_urls, render_report, write_report  # noqa: E402


class _Parse(HTMLParser):
    """Collects tags with attributes, and the text inside caption / figcaption / h2 elements."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.stack: list[str] = []
        self.text: dict[str, list[str]] = {"caption": [], "figcaption": [], "h2": [], "summary": []}

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self.stack.append(tag)

    def handle_endtag(self, tag):
        while self.stack and self.stack.pop() != tag:
            pass

    def handle_data(self, data):
        for t in reversed(self.stack):
            if t in self.text:
                self.text[t].append(data)
                break


def _parse(page: str) -> _Parse:
    p = _Parse()
    p.feed(page)
    return p


@pytest.fixture
def png(tmp_path):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 1))
    ax.plot([0, 1], [0, 1])
    path = tmp_path / "f.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def test_page_inlines_the_figure_bytes_and_labels_every_block(png, tmp_path):
    df = pd.DataFrame({"metric": ["ES", "NS"], "value": [0.123456, float("nan")]})
    sections = [
        Section(title="Trace <1>", intro="restoring **MLPs** at `layer 6`",
                blocks=[Figure(path=png, caption="the figure"), Table(frame=df, caption="the table")]),
        Section(title="Raw", blocks=[Text(text="a < b & c", caption="printed"),
                                     Html(fragment="<div id='v'>view</div>", caption="a view"),
                                     Table(frame=df, caption="folded", collapsed=True)]),
    ]
    out = write_report(tmp_path / "sub" / "r.html", title="T & co", sections=sections,
                       settings={"seed": 0, "config": {"a": 1}}, summary=["**one**"], subtitle="sub")
    page = out.read_text(encoding="utf-8")
    p = _parse(page)
    imgs = [a for t, a in p.tags if t == "img"]
    assert len(imgs) == 1
    src = imgs[0]["src"]
    assert src.startswith("data:image/png;base64,")
    assert base64.b64decode(src.split(",", 1)[1]) == png.read_bytes()  # the exact file, inlined
    assert imgs[0]["alt"] == "the figure"
    from PIL import Image

    assert imgs[0]["style"] == f"width:{(Image.open(png).width + 1) // 2}px"  # 200-dpi figures at printed size
    assert p.text["figcaption"] and "the figure" in "".join(p.text["figcaption"])
    caps = "".join(p.text["caption"])
    assert "the table" in caps and "Everything that determined" in caps
    assert "folded" in "".join(p.text["summary"])  # the collapsed table keeps its caption visible
    assert [h.strip() for h in p.text["h2"]] == ["Trace <1>", "Raw", "Settings"]
    # escaping: text is escaped, trusted HTML is not, the light markup becomes tags
    assert "a &lt; b &amp; c" in page and "<div id='v'>view</div>" in page
    assert "<title>T &amp; co</title>" in page
    assert "<strong>MLPs</strong>" in page and "<code>layer 6</code>" in page and "<strong>one</strong>" in page
    assert "0.123" in page and "0.123456" not in page and "–" in page  # 3 significant digits, NaN shown as –
    assert '{&quot;a&quot;: 1}' in page  # dict settings as JSON
    # the table of contents links every section
    hrefs = [a["href"] for t, a in p.tags if t == "a"]
    ids = [a["id"] for t, a in p.tags if t == "section"]
    assert hrefs == ["#" + i for i in ids] and len(set(ids)) == 3
    assert remote_urls(page) == []
    assert (out.stat().st_mode & 0o777) == 0o644
    # numbers right-aligned, text left-aligned
    assert "<th class='txt'>metric</th><th class='num'>value</th>" in page
    assert "<td class='txt'>ES</td><td class='num'>0.123</td>" in page
    # table rows: the frame's, in order
    assert len(re.findall(r"<tr[ >]", page.split("the table", 1)[1].split("</table>", 1)[0])) == 1 + len(df)


@pytest.mark.parametrize("snippet", [
    '<img src="https://example.org/a.png">', "<link rel=stylesheet href=//cdn.example.org/x.css>",
    "<style>body{background:url( 'http://example.org/b.png')}</style>", "<style>@import 'https://e.org/c.css';</style>",
    '<script type="module">import { render } from "https://unpkg.com/circuitsvis/dist/cdn/esm.js";</script>',
    '<script>import("https://e.org/m.js")</script>', '<script src="http://e.org/s.js"></script>',
])
def test_remote_urls_finds_every_kind_of_remote_load(snippet):
    assert len(remote_urls(snippet)) == 1


def test_remote_urls_ignores_text_links_and_local_resources():
    page = ('<a href="#settings">x</a><img src="data:image/png;base64,AAAA"><script>'
            'throw Error("see https://reactjs.org/docs/error-decoder.html")</script><a href="trace.svg">svg</a>')
    assert remote_urls(page) == []


def test_circuitsvis_local_view_is_self_contained_and_cdn_view_is_not():
    import torch
    from circuitsvis.tokens import colored_tokens_multi

    v = colored_tokens_multi(["a", "b"], torch.rand(2, 2, generator=torch.Generator().manual_seed(0)), ["x", "y"])
    assert remote_urls(v.local_src) == []
    assert remote_urls(v.cdn_src)  # so the check can fail


def test_write_report_refuses_a_remote_resource_and_writes_nothing(tmp_path):
    s = Section(title="x", blocks=[Html(fragment='<img src="https://e.org/a.png">', caption="remote")])
    with pytest.raises(ValueError, match="remote resources"):
        write_report(tmp_path / "r.html", title="t", sections=[s])
    assert not (tmp_path / "r.html").exists()


def test_figure_must_be_png(tmp_path):
    p = tmp_path / "f.svg"
    p.write_text("<svg/>")
    with pytest.raises(ValueError, match="expected a .png figure"):
        render_report(title="t", sections=[Section(title="s", blocks=[Figure(path=p, caption="c")])])
    q = tmp_path / "g.png"
    q.write_text("<svg/>")
    with pytest.raises(ValueError, match="PNG signature"):
        render_report(title="t", sections=[Section(title="s", blocks=[Figure(path=q, caption="c")])])


def test_section_ids_are_unique_slugs():
    a, b = Section(title="2. Where is the fact? Trace"), Section(title="x", anchor="custom")
    assert a.id == "2-where-is-the-fact-trace" and b.id == "custom"


def test_duplicate_section_ids_are_refused():
    with pytest.raises(ValueError, match="distinct ids"):
        render_report(title="t", sections=[Section(title="A b"), Section(title="a-B")])
