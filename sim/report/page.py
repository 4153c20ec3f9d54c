"""HTML building blocks and the stylesheets of every page the harness writes.

report.html, compare.html and client-report.html are self-contained: images are
base64 PNGs and the CSS is inline, so a file can be mailed or attached to a ticket as
it is. Cells are escaped here, so callers pass plain text.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .formatting import esc


def document(title: str, body: str) -> str:
    """A whole HTML document in the reports' look (report.html, compare.html)."""
    return ("<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body><main>"
            f"{body}</main></body></html>\n")


def html_table(header: Sequence[str], rows: Iterable[Sequence[Any]], *,
               numeric: Sequence[int] = (), row_class: Sequence[str] | None = None,
               cls: str = "") -> str:
    """A table; cells are escaped here, so callers pass plain text."""
    head = "".join(f"<th{' class=num' if i in numeric else ''}>{esc(h)}</th>"
                   for i, h in enumerate(header))
    body = []
    for r, cells in enumerate(rows):
        klass = f' class="{esc(row_class[r])}"' if row_class and row_class[r] else ""
        tds = "".join(f"<td{' class=num' if i in numeric else ''}>{esc(c)}</td>"
                      for i, c in enumerate(cells))
        body.append(f"<tr{klass}>{tds}</tr>")
    table_cls = f' class="{esc(cls)}"' if cls else ""
    return (f"<table{table_cls}><thead><tr>{head}</tr></thead><tbody>"
            f"{''.join(body)}</tbody></table>")


def section(anchor: str, title: str, how: str, body: str) -> str:
    return (f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2>'
            f'<p class="how"><b>How to read this:</b> {esc(how)}</p>{body}</section>')


def para(text: str, cls: str = "") -> str:
    return f'<p{f" class={esc(cls)}" if cls else ""}>{esc(text)}</p>'


def embedded_png(path: Path, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{data}">'


def figure(path: Path, caption: str, alt: str) -> str:
    return (f"<figure>{embedded_png(Path(path), alt)}"
            f"<figcaption>{esc(caption)}</figcaption></figure>")


def warn_list(items: Iterable[Any]) -> str:
    return '<ul class="warn">' + "".join(f"<li>{esc(w)}</li>" for w in items) + "</ul>"


def card(value: str, label: str, *, bad: bool = False) -> str:
    return (f'<div class="card{" bad" if bad else ""}"><div class="v">{esc(value)}</div>'
            f'<div class="k">{esc(label)}</div></div>')




CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#222;
  margin:0;background:#f6f6f4}
main{max-width:1180px;margin:0 auto;padding:24px 28px 60px;background:#fff}
h1{font-size:26px;margin:0 0 4px}h2{font-size:20px;margin:34px 0 6px;
  border-bottom:2px solid #e4e4e0;padding-bottom:4px}h3{font-size:16px;margin:18px 0 6px}
p.how{color:#555;font-size:13.5px;margin:2px 0 12px;background:#f3f6fa;padding:6px 10px;
  border-left:3px solid #8fb3d9}
p.lede{color:#444;margin:2px 0 10px}p.muted{color:#777;font-size:13px}
nav{font-size:13.5px;margin:10px 0 4px}nav a{margin-right:12px;color:#2a5d9f}
table{border-collapse:collapse;margin:6px 0 14px;font-size:13.5px;min-width:40%}
table.wide{width:100%}
th,td{border-bottom:1px solid #e6e6e6;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#fafafa;font-weight:600}td.num,th.num{text-align:right;
  font-variant-numeric:tabular-nums;white-space:nowrap}
tr.bad td{background:#fdecea}tr.clientbug td:first-child{color:#8a3b00}
table.kv{width:auto}table.kv th{width:220px}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(200px,1fr));gap:10px;
  margin:8px 0 10px}
.card{border:1px solid #e2e2de;border-radius:6px;padding:8px 12px;background:#fcfcfb}
.card .v{font-size:21px;font-weight:600}.card .k{font-size:12.5px;color:#666}
.card.bad{border-color:#e0a39a;background:#fdf3f1}
ul.warn{background:#fff7e0;border:1px solid #f0d48a;border-radius:6px;padding:8px 10px 8px 30px}
ul.warn li{margin:3px 0}.ok{color:#2e7d32;font-weight:600}
figure{margin:12px 0 22px}figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:13px;color:#555;margin-top:4px}
pre{background:#f7f7f5;border:1px solid #e4e4e0;padding:10px;overflow:auto;font-size:12.5px;
  max-height:420px}
code{background:#f2f2ef;padding:0 3px;border-radius:3px}
"""

# client-report.html's own, plainer look (grade badges, compact tables).
CLIENT_CSS = """
body { font: 14px system-ui, sans-serif; margin: 2em; color: #1f2328; }
table { border-collapse: collapse; margin: 1em 0; }
td, th { border: 1px solid #d0d7de; padding: 4px 8px; vertical-align: top; text-align: left; }
td.n { text-align: right; } ul { margin: 0; padding-left: 1.2em; }
.badge { color: white; border-radius: 4px; padding: 1px 6px; font-weight: 600; }
img { max-width: 100%; }
"""
