"""report.md -> a self-contained report.html (markdown-it-py; tables, verdict colours, figures
embedded)."""
from __future__ import annotations

import base64
import html
import re
from pathlib import Path


VERDICT_TONE = {"converged": "good", "learning": "warn", "unstable": "warn", "not_learning": "warn",
                "negative_loss": "bad", "diverged": "bad", "crashed": "bad"}


IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml",
               ".gif": "image/gif", ".webp": "image/webp"}


STYLE = """
body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222;line-height:1.4}
h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
.scroll{overflow-x:auto;max-width:100%;margin:1em 0}
table{border-collapse:collapse;font-size:13px}
td,th{border:1px solid #ccc;padding:3px 6px;text-align:left;vertical-align:top}
th{background:#eef1f5;vertical-align:bottom}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
td.num{white-space:nowrap}
tbody tr:nth-child(even) td{background:#fafafa}
th:first-child,td:first-child{position:sticky;left:0;background:#fff;font-weight:600}
th:first-child{background:#eef1f5}
td.good{background:#dff3e0 !important;color:#135c1c;font-weight:600}
td.warn{background:#fff3d6 !important;color:#6b4d00;font-weight:600}
td.bad{background:#fbe0e0 !important;color:#8a1414;font-weight:600}
td code{background:transparent;padding:0}
code{background:#f3f3f3;padding:0 3px}
img{max-width:100%;height:auto}
figure{margin:1em 0}
.gallery{display:flex;flex-wrap:wrap;gap:1em 2em;align-items:flex-start}
.gallery figure{margin:0}
figcaption{font-size:13px;text-align:center;color:#444}
.missing{color:#8a1414}
"""


def render_html(md: str, folder: Path) -> str:
    """A self-contained page from the report's Markdown, parsed by markdown-it-py (CommonMark with
    tables): wide tables scroll sideways, numbers are right-aligned, verdict cells coloured, figures
    embedded as base64 (consecutive figures side by side, each captioned). No external CSS, JS or fonts."""
    from markdown_it import MarkdownIt
    parser = MarkdownIt("commonmark", {"html": False}).enable("table")
    tokens = parser.parse(md)
    mark_headings(tokens)
    mark_tables(tokens)
    mark_galleries(tokens)
    parser.add_render_rule("image", lambda renderer, tokens, i, options, env: html_image(tokens[i], folder))
    parser.add_render_rule("table_open", lambda *args: "<div class='scroll'><table>\n")
    parser.add_render_rule("table_close", lambda *args: "</table></div>\n")
    body = parser.renderer.render(tokens, parser.options, {})
    titles = [tokens[i + 1].content for i, t in enumerate(tokens) if t.type == "heading_open" and t.tag == "h1"]
    title = titles[0].replace("`", "") if titles else "harness report"
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>\n"
            + body + "</body></html>\n")


def mark_headings(tokens) -> None:
    """Headings get ids (links into the report: report.html#verdicts)."""
    for i, token in enumerate(tokens):
        if token.type == "heading_open":
            slug = re.sub(r"[^a-z0-9]+", "-", tokens[i + 1].content.lower()).strip("-")
            token.attrSet("id", slug)


def mark_tables(tokens) -> None:
    """Per table: columns whose cells are all numbers are right-aligned (class num); cells of
    `verdict` columns are coloured by verdict, `false` in `agrees`/`same verdict` as bad."""
    start = None
    for i, token in enumerate(tokens):
        if token.type == "table_open":
            start = i
        elif token.type == "table_close" and start is not None:
            mark_table(tokens[start:i + 1])
            start = None


def mark_table(tokens) -> None:
    rows, row = [], []
    for i, token in enumerate(tokens):
        if token.type in ("th_open", "td_open"):
            row.append((token, tokens[i + 1].content))
        elif token.type == "tr_close":
            rows.append(row)
            row = []
    if not rows:
        return
    head, rest = [text for _, text in rows[0]], rows[1:]
    for i, name in enumerate(head):
        cells = [r[i] for r in rest if i < len(r)]
        numeric = bool(cells) and any(text for _, text in cells) and all(not text or is_number(text)
                                                                         for _, text in cells)
        rows[0][i][0].attrSet("scope", "col")
        for token, text in ([rows[0][i]] if numeric else []) + cells:
            classes = ["num"] if numeric else []
            tone = cell_tone(name, text) if token.type == "td_open" else ""
            if classes or tone:
                token.attrSet("class", " ".join(filter(None, classes + [tone])))


def cell_tone(column: str, text: str) -> str:
    # "converged (validation near training)" is coloured as converged; the note stays visible.
    name, value = column.strip("`").lower(), text.strip("`").split(" (")[0]
    if name.startswith("verdict") and value in VERDICT_TONE:
        return VERDICT_TONE[value]
    if name in ("agrees", "same verdict") and value == "false":
        return "bad"
    return ""


def mark_galleries(tokens) -> None:
    """A paragraph of figures only becomes one figure, or a captioned gallery when there are several."""
    for i, token in enumerate(tokens):
        if token.type != "paragraph_open":
            continue
        children = tokens[i + 1].children or []
        images = [c for c in children if c.type == "image"]
        if not images or any(c.type not in ("image", "softbreak") and c.content.strip() for c in children):
            continue
        if len(images) > 1:
            token.tag, tokens[i + 2].tag = "div", "div"
            token.attrSet("class", "gallery")
            for image in images:
                image.meta["caption"] = True
        else:
            token.hidden = tokens[i + 2].hidden = True       # a lone figure needs no <p> around it


def is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def html_image(token, folder: Path) -> str:
    """One figure, embedded as base64; captioned in a gallery; a missing file is said, not hidden."""
    name, alt = token.attrGet("src") or "", token.content
    path = folder / name
    if not path.is_file():
        return f"<span class='missing'>Figure missing: <code>{html.escape(name)}</code></span>"
    mime = IMAGE_TYPES.get(path.suffix.lower(), "image/png")
    data = base64.b64encode(path.read_bytes()).decode()
    caption = Path(alt).stem if Path(alt).suffix.lower() in IMAGE_TYPES else alt
    return (f'<figure><img alt="{html.escape(alt)}" title="{html.escape(name)}" src="data:{mime};base64,{data}">'
            + (f"<figcaption>{html.escape(caption)}</figcaption>" if token.meta.get("caption") else "")
            + "</figure>")
