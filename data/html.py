"""Self-contained HTML pages: a page of sections, tables of rows and inline figures, for every report the toolkit writes."""
from __future__ import annotations

import base64
import html
import io
from typing import Iterable, Sequence

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.text import Text

from carelens.data.terminal import in_one_direction

STYLE = """body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:980px;color:#222}
h1{font-size:1.6rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ccc;padding:.25rem .6rem;text-align:left}
th{background:#f3f3f3}td.n{text-align:right;font-variant-numeric:tabular-nums}img{max-width:100%}"""


def figure_html(fig: Figure) -> str:
    """A matplotlib figure as an <img> tag holding the PNG inline (base64), so the page needs no other file. Every
    label is drawn as written: titles, axis labels, legends and ticks name columns, classes and categories from the
    data, where a `$` would otherwise start mathtext (`spend_$10_$20` fails to parse and takes the report with it)."""
    buffer = io.BytesIO()
    # Labels made so far keep the setting they were made with; tick labels are made while the figure is drawn.
    with matplotlib.rc_context({"text.parse_math": False}):
        for text in fig.findobj(Text):
            text.set_parse_math(False)
        fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return f'<img alt="figure" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


def plot_label(value: object) -> str:
    """A value from the data as a figure draws it: lone surrogates as their escapes (the font renderer takes only
    Unicode text). `figure_html` keeps every label literal."""
    return str(value).encode("utf-8", "backslashreplace").decode("utf-8")


def shown(value: object) -> str:
    """A value from the data as HTML text: escaped, and with its direction controls as their escapes, so that a
    `\u202e` in an id cannot show it reversed."""
    return html.escape(in_one_direction(str(value)))


def _cell(value) -> str:
    if isinstance(value, (float, np.floating)):
        return f'<td class="n">{value:.4f}</td>'
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return f'<td class="n">{value:,}</td>'
    return f"<td>{shown('—' if value is None else value)}</td>"


def table_html(rows: Sequence[dict]) -> str:
    """Rows of dicts as an HTML table whose header is the union of their keys in first-seen order."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    head = "".join(f"<th>{shown(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(_cell(row.get(c)) for c in columns) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def html_report(title: str, sections: Iterable[tuple[str, str]]) -> str:
    """A whole HTML page: the title, then each (heading, HTML body) section in order."""
    parts = "".join(f"<section><h2>{shown(heading)}</h2>{body}</section>" for heading, body in sections)
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{shown(title)}</title>'
            f"<style>{STYLE}</style></head><body><h1>{shown(title)}</h1>{parts}</body></html>")
