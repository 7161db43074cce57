"""Renderers of a report's sections: Markdown, one self-contained HTML page (plots embedded),
LaTeX tables (booktabs). A report is sections of tables, text and figures (`Section`); what
they say is decided elsewhere (`robustag.report`), how they look here. Everything a plugin or
user names is escaped in every format."""

from __future__ import annotations

import base64
import html
import json
import re
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class ReportTable:
    name: str
    title: str
    header: list[str]
    rows: list[list[str]]
    note: str = ""


@dataclass
class Section:
    title: str
    tables: list[ReportTable] = field(default_factory=list)
    figures: list[tuple[str, str]] = field(default_factory=list)  # (caption, png file name)
    text: list[str] = field(default_factory=list)


def render_markdown(run: Path, sections: list[Section], environment: dict) -> str:
    """Every name a user or plugin chose is escaped, as in the HTML: Markdown passes raw HTML through."""
    e = _markdown_escape
    lines = [f"# robustag report: {e(Path(run).name)}", ""]
    for section in sections:
        lines += [f"## {e(section.title)}", ""]
        for table in section.tables:
            lines += [f"### {e(table.title)}", "", "| " + " | ".join(e(h, cell=True) for h in table.header) + " |",
                      "|" + "---|" * len(table.header)]
            lines += ["| " + " | ".join(e(cell, cell=True) for cell in row) + " |" for row in table.rows]
            lines += ["", e(table.note), ""]
        lines += [*map(e, section.text), ""] if section.text else []
        for caption, png in section.figures:
            lines += [f"![{e(caption)}](plots/{png})", "", f"*{e(caption)}*", ""]
    settings = json.dumps(environment, indent=2)
    fence = "`" * max(3, 1 + max((len(run) for run in re.findall(r"`+", settings)), default=0))
    lines += ["## Configuration and environment", "", f"{fence}json", settings, fence, ""]
    return "\n".join(lines)


def _markdown_escape(text: str, cell: bool = False) -> str:
    """No HTML can open (<, >, & become entities); in a table cell a | cannot end the cell."""
    escaped = html.escape(str(text), quote=False)
    return escaped.replace("|", "\\|") if cell else escaped


def render_html(run: Path, sections: list[Section], environment: dict, figures: Path) -> str:
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>robustag report: {e(Path(run).name)}</title>",
             "<style>body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;margin:1em 0;font-size:0.85em}th,td{border-bottom:1px solid #ddd;"
             "padding:4px 8px;text-align:right}th:nth-child(-n+3),td:nth-child(-n+3){text-align:left}"
             "th{border-bottom:2px solid #444}figure{margin:1.5em 0}figcaption{font-size:0.85em;color:#555}"
             ".note{font-size:0.85em;color:#555}pre{background:#f6f6f6;padding:1em;overflow:auto}</style></head><body>",
             f"<h1>robustag report: {e(Path(run).name)}</h1>"]
    for section in sections:
        parts.append(f"<h2>{e(section.title)}</h2>")
        for table in section.tables:
            parts.append(f"<h3>{e(table.title)}</h3><table><thead><tr>"
                         + "".join(f"<th>{e(h)}</th>" for h in table.header) + "</tr></thead><tbody>")
            parts += ["<tr>" + "".join(f"<td>{e(cell)}</td>" for cell in row) + "</tr>" for row in table.rows]
            parts.append(f"</tbody></table><p class='note'>{e(table.note)}</p>")
        parts += [f"<p>{e(text)}</p>" for text in section.text]
        for caption, png in section.figures:
            data = base64.b64encode((figures / png).read_bytes()).decode()
            parts.append(f"<figure><img alt='{e(caption)}' src='data:image/png;base64,{data}'>"
                         f"<figcaption>{e(caption)}</figcaption></figure>")
    parts.append(f"<h2>Configuration and environment</h2><pre>{e(json.dumps(environment, indent=2))}</pre></body></html>")
    return "\n".join(parts)


LATEX_SPECIAL = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
                 "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}",
                 "±": r"$\pm$", "▲": r"$^{\blacktriangle}$", "▼": r"$^{\blacktriangledown}$", "ε": r"$\varepsilon$"}


def latex_escape(text: str) -> str:
    return "".join(LATEX_SPECIAL.get(char, char) for char in str(text))


def render_latex(table: ReportTable) -> str:
    columns = "lll" + "r" * (len(table.header) - 3)
    lines = [r"% requires \usepackage{booktabs} and \usepackage{amssymb}", r"\begin{table}[t]", r"\centering",
             rf"\caption{{{latex_escape(table.title)}. {latex_escape(table.note)}}}", r"\resizebox{\textwidth}{!}{%",
             rf"\begin{{tabular}}{{{columns}}}", r"\toprule", " & ".join(latex_escape(h) for h in table.header) + r" \\",
             r"\midrule"]
    lines += [" & ".join(latex_escape(cell) for cell in row) + r" \\" for row in table.rows]
    lines += [r"\bottomrule", r"\end{tabular}}", r"\end{table}", ""]
    return "\n".join(lines)
