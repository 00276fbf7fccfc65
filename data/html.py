"""Self-contained HTML pages: a page of sections, tables of rows and inline figures, for every report the toolkit writes."""
from __future__ import annotations

import base64
import html
import io
import re
from typing import Iterable, NamedTuple, Sequence

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.text import Text

from carelens.data.terminal import in_one_direction

STYLE = """body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:980px;color:#222}
h1{font-size:1.6rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ccc;padding:.25rem .6rem;text-align:left}
th{background:#f3f3f3}td.n{text-align:right;font-variant-numeric:tabular-nums}img{max-width:100%}
nav ul{columns:2;padding-left:1.2rem}table[data-sortable] th{cursor:pointer;user-select:none}
th[aria-sort=ascending]::after{content:" \\25B2"}th[aria-sort=descending]::after{content:" \\25BC"}
input[type=search]{padding:.25rem .4rem;min-width:18rem}"""

#: Wires every `table[data-sortable]` (a header click sorts by its column: by `data-value` where the cells carry one,
#: numbers first descending, text first ascending, again reverses) and every `input[data-filter]` (keeps the rows of
#: the table in its `[data-rows]` box whose text holds what was typed, and counts them). It reads and writes text only
#: (`textContent`), never markup, because cells hold data. `body[data-ready="1"]` tells a test it ran.
SCRIPT = """(function(){
function key(cell){var v=cell.dataset.value;return v===undefined?cell.textContent:Number(v);}
function compare(a,b){var an=typeof a==="number"&&!isNaN(a),bn=typeof b==="number"&&!isNaN(b);
 if(an&&bn)return a-b;if(an!==bn)return an?-1:1;return String(a).localeCompare(String(b),undefined,{numeric:true});}
function sortable(table){var heads=Array.from(table.tHead.rows[0].cells);
 heads.forEach(function(th,i){th.tabIndex=0;
  function sort(){var body=table.tBodies[0],rows=Array.from(body.rows),first=rows.length&&rows[0].cells[i];
   var down=th.getAttribute("aria-sort")?th.getAttribute("aria-sort")==="ascending":
    Boolean(first&&first.dataset.value!==undefined);
   heads.forEach(function(h){h.removeAttribute("aria-sort");});
   th.setAttribute("aria-sort",down?"descending":"ascending");
   rows.sort(function(a,b){var c=compare(key(a.cells[i]),key(b.cells[i]));return down?-c:c;});
   rows.forEach(function(row){body.appendChild(row);});}
  th.addEventListener("click",sort);
  th.addEventListener("keydown",function(e){if(e.key==="Enter"||e.key===" "){e.preventDefault();sort();}});});}
function filterable(input){var box=input.closest("[data-rows]"),count=box.querySelector("[data-count]");
 var rows=Array.from(box.querySelector("table").tBodies[0].rows);
 var texts=rows.map(function(row){return Array.from(row.cells).map(function(c){return c.textContent;}).join("\\n")
  .toLowerCase();});
 input.addEventListener("input",function(){var q=input.value.toLowerCase(),n=0;
  rows.forEach(function(row,i){row.hidden=!texts[i].includes(q);n+=row.hidden?0:1;});
  count.textContent=n.toLocaleString("en-US")+" of "+rows.length.toLocaleString("en-US")+" shown";});}
document.querySelectorAll("table[data-sortable]").forEach(sortable);
document.querySelectorAll("input[data-filter]").forEach(filterable);
document.body.dataset.ready="1";})();"""


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


class Shown(NamedTuple):
    """A number written as a reader wants it ('28%', '0.19 (0.15–0.23)'), sorted by its value in a sortable table."""

    text: str
    value: float


def _cell(value, valued: bool) -> str:
    """A table cell; with `valued`, a number carries its exact value in `data-value`, which the page sorts by."""
    if isinstance(value, Shown):
        text, number = shown(value.text), float(value.value)
    elif isinstance(value, (float, np.floating)):
        text, number = f"{value:.4f}", float(value)
    elif isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        text, number = f"{value:,}", int(value)
    else:
        return f"<td>{shown('—' if value is None else value)}</td>"
    exact = f' data-value="{number!r}"' if valued else ""
    return f'<td class="n"{exact}>{text}</td>'


def table_html(rows: Sequence[dict], sortable: bool = False, filterable: bool = False) -> str:
    """Rows of dicts as an HTML table whose header is the union of their keys in first-seen order. `sortable`: a click
    on a header sorts by that column (numbers by value); `filterable`: a text box above keeps the rows that hold what
    is typed and counts them. Both work through `SCRIPT`, which `html_report` puts on every page."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    head = "".join(f"<th>{shown(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(_cell(row.get(c), sortable) for c in columns) + "</tr>" for row in rows)
    table = f"<table{' data-sortable' if sortable else ''}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    if not filterable:
        return table
    search = (f'<p><input type="search" data-filter placeholder="Filter rows" aria-label="Filter rows"> '
              f'<span data-count aria-live="polite">{len(rows):,} of {len(rows):,} shown</span></p>')
    return f"<div data-rows>{search}{table}</div>"


def section_ids(headings: Sequence[str]) -> list[str]:
    """An HTML id per heading: its ASCII slug, numbered from -2 where an earlier heading took it."""
    ids: list[str] = []
    for heading in headings:
        slug = re.sub(r"[^a-z0-9]+", "-", heading.lower()).strip("-") or "section"
        candidate, number = slug, 1
        while candidate in ids:
            number += 1
            candidate = f"{slug}-{number}"
        ids.append(candidate)
    return ids


def html_report(title: str, sections: Iterable[tuple[str, str]]) -> str:
    """A whole HTML page: the title, a table of contents, then each (heading, HTML body) section in order, and
    `SCRIPT` for its sortable and filterable tables."""
    sections = list(sections)
    ids = section_ids([heading for heading, _ in sections])
    contents = "".join(f'<li><a href="#{i}">{shown(heading)}</a></li>' for i, (heading, _) in zip(ids, sections))
    parts = "".join(f'<section id="{i}"><h2>{shown(heading)}</h2>{body}</section>'
                    for i, (heading, body) in zip(ids, sections))
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{shown(title)}</title>'
            f"<style>{STYLE}</style></head><body><h1>{shown(title)}</h1>"
            f'<nav aria-label="Contents"><ul>{contents}</ul></nav>{parts}<script>{SCRIPT}</script></body></html>')
