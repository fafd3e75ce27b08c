"""One self-contained HTML report per run: metrics, tables and every plot (plotly.js inlined once)."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs


@dataclass
class Report:
    """Sections collected while a run is analysed, written as ``report.html``."""

    title: str
    sections: list[tuple[str, str]] = field(default_factory=list)

    def add_metrics(self, metrics: dict[str, float], heading: str = "Metrics") -> None:
        rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{v:.6g}</td></tr>" for k, v in sorted(metrics.items()))
        self.sections.append((heading, f"<table class='kv'>{rows}</table>"))

    def add_figure(self, heading: str, fig: go.Figure) -> None:
        self.sections.append((heading, fig.to_html(full_html=False, include_plotlyjs=False)))

    def add_table(self, heading: str, table: pd.DataFrame, max_rows: int = 200, note: str = "") -> None:
        body = table.head(max_rows).to_html(index=False, escape=True, na_rep="", float_format=lambda v: f"{v:.4g}")
        more = f"<p>showing {max_rows} of {len(table)} rows; the full table is an artifact</p>" if len(table) > max_rows else ""
        self.sections.append((heading, (f"<p>{html.escape(note)}</p>" if note else "") + body + more))

    def add_text(self, heading: str, text: str) -> None:
        self.sections.append((heading, f"<p>{html.escape(text)}</p>"))

    def write(self, path: Path) -> None:
        toc = "".join(f"<li><a href='#s{i}'>{html.escape(h)}</a></li>" for i, (h, _) in enumerate(self.sections))
        body = "".join(f"<section id='s{i}'><h2>{html.escape(h)}</h2>{c}</section>" for i, (h, c) in enumerate(self.sections))
        Path(path).write_text(
            "<!doctype html><html><head><meta charset='utf-8'>"
            f"<title>{html.escape(self.title)}</title>"
            f"<script type='text/javascript'>{get_plotlyjs()}</script>"
            "<style>body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;font-size:13px}"
            "td,th{padding:3px 8px;border-bottom:1px solid #ddd;text-align:left;vertical-align:top}"
            "section{margin-bottom:2em}</style></head><body>"
            f"<h1>{html.escape(self.title)}</h1><ul>{toc}</ul>{body}</body></html>",
            encoding="utf-8",
        )
