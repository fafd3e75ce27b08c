"""One self-contained HTML report per run: metrics, tables and every plot (plotly.js inlined once).

The page is designed to be read, offline, as one file: a header with the dataset, the
configuration that matters, the key scores (each with a one-line meaning) and the advice; a
table of contents; then the sections in the order they were added. Its styles are embedded,
it loads nothing from the network, and plotly.js is inlined once for every figure (and left
out when there is no figure).
"""

from __future__ import annotations

import html
import math
import numbers
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

import pandas as pd
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

# One line per metric: what it measures and which way is better. Shown beside the key scores
# in the header and in the metrics table.
METRIC_MEANINGS: dict[str, str] = {
    "silhouette": "-1..1, higher is better: tight clusters, well apart from the nearest other cluster",
    "silhouette_ref": "silhouette in the sweep's shared reference space, comparable across preprocessing",
    "calinski_harabasz": "higher is better: between-cluster over within-cluster dispersion (compare on the same data)",
    "calinski_harabasz_ref": "Calinski-Harabasz in the sweep's shared reference space",
    "davies_bouldin": "≥ 0, lower is better: how much each cluster resembles its most similar one",
    "davies_bouldin_ref": "Davies-Bouldin in the sweep's shared reference space",
    "inertia": "lower is tighter: sum of squared distances to the nearest centre; always falls as k grows",
    "ari": "agreement with the true labels, adjusted for chance: 1 identical, 0 chance level",
    "nmi": "agreement with the true labels (normalised mutual information): 0..1, higher is better",
    "v_measure": "agreement with the true labels (homogeneity and completeness): 0..1, higher is better",
    "purity": "share of rows in their cluster's majority true label: 0..1, higher is better",
    "composition_purity": "purity of the composition table (clusters against the true labels)",
    "n_clusters": "clusters found (noise not counted)",
    "noise_fraction": "share of rows labelled noise (-1); the scores leave them out",
    "stability": "agreement (mean ARI) of refits on resamples: 0..1, higher is more reproducible",
    "cluster_size_min": "rows in the smallest cluster",
    "cluster_size_max": "rows in the largest cluster",
    "silhouette_sample_size": "rows the silhouette was computed on",
    "reference_sample_size": "rows the reference-space scores (the _ref metrics) were computed on",
    "explain_mean_f1": "mean held-out F1 of the cluster-vs-rest models: how well the features tell clusters apart",
    "pca_explained_variance": "share of the variance the PCA keeps",
}

# The scores shown as cards in the header, in this order (those a run has).
KEY_SCORES = (
    "silhouette",
    "silhouette_ref",
    "calinski_harabasz",
    "davies_bouldin",
    "inertia",
    "ari",
    "nmi",
    "purity",
    "n_clusters",
    "noise_fraction",
    "stability",
)

_PREFIX_MEANINGS = {"time/": "seconds", "data/": "about the input data"}


def metric_meaning(name: str) -> str:
    """The one-line meaning of a metric name ('' when unknown)."""
    if name in METRIC_MEANINGS:
        return METRIC_MEANINGS[name]
    for prefix, meaning in _PREFIX_MEANINGS.items():
        if name.startswith(prefix):
            return meaning
    return ""


def format_number(value: object) -> str:
    """A number as a reader wants it: 4 significant digits, thousands separators, no ``10.0``.

    ``0.123456789`` -> ``0.1235``; ``1234567`` -> ``1,234,567``; ``12345.67`` -> ``12,346``;
    ``10.0`` -> ``10``; NaN and None -> ``''``. Anything else is ``str(value)``.
    """
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, numbers.Integral):
        return f"{int(value):,}"
    if isinstance(value, numbers.Real):
        v = float(value)
        if math.isnan(v):
            return ""
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        if v.is_integer() and abs(v) < 1e15:
            return f"{int(v):,}"
        if abs(v) >= 1000 and abs(v) < 1e15:
            return f"{v:,.0f}"
        return f"{v:.4g}"
    return str(value)


def _is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


_NUMERIC_TEXT = re.compile(r"^[+-]?(\d[\d,]*\.?\d*|\.\d+)([eE][+-]?\d+)?%?$")


def _is_missing(value: object) -> bool:
    if value is None:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # lists, arrays: not missing
        return False


def _numeric_column(values: Iterable[object]) -> bool:
    """Whether every present value of a column is a number (or a number written as text)."""
    seen = False
    for value in values:
        if _is_missing(value) or (isinstance(value, str) and not value.strip()):
            continue
        if _is_number(value) or (isinstance(value, str) and _NUMERIC_TEXT.match(value.strip())):
            seen = True
            continue
        return False
    return seen


def _cell(value: object) -> str:
    if _is_missing(value):
        return ""
    return html.escape(format_number(value))


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _slug(text: str, taken: set[str]) -> str:
    base = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"
    slug, n = base, 2
    while slug in taken:
        slug, n = f"{base}-{n}", n + 1
    taken.add(slug)
    return slug


def table_html(table: pd.DataFrame) -> str:
    """A DataFrame as a styled table: numeric columns right-aligned and formatted, text escaped."""
    columns = [" / ".join(map(str, c)) if isinstance(c, tuple) else str(c) for c in table.columns]
    numeric = [_numeric_column(table.iloc[:, j].tolist()) for j in range(table.shape[1])]
    head = "".join(f"<th class='num'>{_e(c)}</th>" if num else f"<th>{_e(c)}</th>" for c, num in zip(columns, numeric))
    rows = []
    for values in table.itertuples(index=False, name=None):
        cells = "".join(
            f"<td class='num'>{_cell(v)}</td>" if num else f"<td>{_cell(v)}</td>" for v, num in zip(values, numeric)
        )
        rows.append(f"<tr>{cells}</tr>")
    return (
        "<div class='table-wrap'><table class='data'>"
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
    )


def score_advice(scores: Mapping[str, float]) -> list[str]:
    """Advice a single run's scores call for: noise left out of the scores, nothing scored, unstable labels."""
    advice = []
    noise = scores.get("noise_fraction")
    if noise is not None and not math.isnan(noise) and noise > 0:
        line = (
            f"{noise:.0%} of the rows are noise (label -1): silhouette, Calinski-Harabasz and Davies-Bouldin "
            f"are scored on the other {1 - noise:.0%}"
        )
        if noise >= 0.3:
            line += "; a smaller min_cluster_size or min_samples places more of them"
        advice.append(line)
    if "silhouette" not in scores and "n_clusters" in scores:
        advice.append(
            f"{format_number(scores['n_clusters'])} cluster(s): silhouette, Calinski-Harabasz and Davies-Bouldin "
            "need at least 2 clusters and were not scored"
        )
    stability = scores.get("stability")
    if stability is not None and not math.isnan(stability) and stability < 0.6:
        advice.append(
            f"stability {stability:.2f}: refits on resamples disagree; these clusters may not be reproducible"
        )
    return advice


@dataclass
class Report:
    """Sections collected while a run is analysed, written as ``report.html``.

    ``sections`` holds ``(heading, html)`` pairs; another report's sections can be appended to
    it (the sweep's parent holds its best cell's). The header fields are optional:
    :meth:`set_header` fills them, and the first :meth:`add_metrics` gives the key scores.
    """

    title: str
    sections: list[tuple[str, str]] = field(default_factory=list)
    subtitle: str = ""
    dataset: str | None = None
    rows: int | None = None
    columns: int | None = None
    config: dict[str, str] = field(default_factory=dict)
    advice: list[str] = field(default_factory=list)
    scores: dict[str, float] = field(default_factory=dict)

    def set_header(
        self,
        dataset: str | None = None,
        rows: int | None = None,
        columns: int | None = None,
        config: Mapping[str, object] | None = None,
        advice: Iterable[str] | None = None,
        scores: Mapping[str, float] | None = None,
        subtitle: str | None = None,
    ) -> None:
        """Fill the header: the dataset (name, rows, columns), the configuration that matters
        (``{name: value}``, shown in order), advice lines and the key scores. Arguments left out
        keep what is there."""
        if dataset is not None:
            self.dataset = str(dataset)
        if rows is not None:
            self.rows = int(rows)
        if columns is not None:
            self.columns = int(columns)
        if config is not None:
            self.config = {str(k): "" if v is None else str(v) for k, v in config.items()}
        if advice is not None:
            self.advice = [str(line) for line in advice if line]
        if scores is not None:
            self.scores = dict(scores)
        if subtitle is not None:
            self.subtitle = str(subtitle)

    def add_advice(self, line: str) -> None:
        """One more advice line for the header."""
        if line:
            self.advice.append(str(line))

    def add_metrics(self, metrics: dict[str, float], heading: str = "Metrics") -> None:
        """A table of every metric with its meaning; the first one also gives the header's key scores."""
        if not self.scores:
            self.scores = dict(metrics)
        order = {name: i for i, name in enumerate((*KEY_SCORES, *METRIC_MEANINGS))}

        def key(name: str):
            return (name.startswith(("time/", "data/")), order.get(name, len(order)), name)

        rows = "".join(
            f"<tr><th scope='row'><code>{_e(k)}</code></th>"
            # the exact value (6 significant digits) shows on hover
            f"<td class='num' title='{_e(format(v, '.6g') if _is_number(v) else v)}'>{_cell(v)}</td>"
            f"<td class='meaning'>{_e(metric_meaning(k))}</td></tr>"
            for k, v in sorted(metrics.items(), key=lambda kv: key(kv[0]))
        )
        self.sections.append((
            heading,
            "<div class='table-wrap all'><table class='data kv'><thead><tr><th>metric</th><th class='num'>value</th>"
            f"<th>meaning</th></tr></thead><tbody>{rows}</tbody></table></div>",
        ))

    def add_figure(self, heading: str, fig: go.Figure) -> None:
        self.sections.append(
            (heading, "<div class='figure'>" + fig.to_html(full_html=False, include_plotlyjs=False) + "</div>")
        )

    def add_table(self, heading: str, table: pd.DataFrame, max_rows: int = 200, note: str = "") -> None:
        body = table_html(table.head(max_rows))
        more = (
            f"<p class='note'>showing {max_rows:,} of {len(table):,} rows; the full table is an artifact</p>"
            if len(table) > max_rows else ""
        )
        self.sections.append((heading, (f"<p class='note'>{_e(note)}</p>" if note else "") + body + more))

    def add_text(self, heading: str, text: str) -> None:
        self.sections.append((heading, f"<p class='text'>{_e(text)}</p>"))

    # -- writing -------------------------------------------------------------------------------

    def _header_html(self) -> str:
        parts = [f"<h1>{_e(self.title)}</h1>"]
        if self.subtitle:
            parts.append(f"<p class='subtitle'>{_e(self.subtitle)}</p>")
        facts = []
        if self.dataset is not None:
            facts.append(f"<span class='fact'><span class='label'>dataset</span> <strong>{_e(self.dataset)}</strong></span>")
        if self.rows is not None:
            facts.append(f"<span class='fact'><strong>{format_number(self.rows)}</strong> rows</span>")
        if self.columns is not None:
            facts.append(f"<span class='fact'><strong>{format_number(self.columns)}</strong> columns</span>")
        if facts:
            parts.append(f"<p class='facts'>{''.join(facts)}</p>")
        if self.config:
            items = "".join(f"<div><dt>{_e(k)}</dt><dd>{_e(v)}</dd></div>" for k, v in self.config.items())
            parts.append(f"<dl class='config'>{items}</dl>")
        cards = []
        for name in KEY_SCORES:
            value = self.scores.get(name)
            if value is None or (_is_number(value) and math.isnan(float(value))):
                continue
            if name == "noise_fraction" and _is_number(value) and float(value) == 0:
                continue  # no noise: nothing to say
            base = self.scores.get(name[: -len("_ref")]) if name.endswith("_ref") else None
            if base is not None and format_number(base) == format_number(value):
                continue  # scored in the space that was clustered: the same number twice
            cards.append(
                f"<div class='card'><div class='name'>{_e(name)}</div>"
                f"<div class='value' title='{_e(format(value, '.6g') if _is_number(value) else value)}'>"
                f"{_cell(value)}</div><div class='meaning'>{_e(metric_meaning(name))}</div></div>"
            )
        if cards:
            parts.append(f"<div class='cards'>{''.join(cards)}</div>")
        if self.advice:
            items = "".join(f"<li>{_e(line)}</li>" for line in self.advice)
            parts.append(f"<div class='advice'><h2>Advice</h2><ul>{items}</ul></div>")
        return f"<header>{''.join(parts)}</header>"

    def to_html(self) -> str:
        """The whole page, one self-contained HTML document."""
        taken: set[str] = {"top", "contents"}
        ids = [_slug(h, taken) for h, _ in self.sections]
        toc = "".join(f"<li><a href='#{i}'>{_e(h)}</a></li>" for i, (h, _) in zip(ids, self.sections))
        body = "".join(
            f"<section id='{i}'><h2>{_e(h)} <a class='up' href='#top' title='back to the top'>&#8593;</a></h2>{c}</section>"
            for i, (h, c) in zip(ids, self.sections)
        )
        nav = f"<nav id='contents'><h2>Contents</h2><ol>{toc}</ol></nav>" if self.sections else ""
        # plotly.js once, before the figures that call it; not at all without a figure (4.6 MB)
        has_figures = any("Plotly.newPlot" in c for _, c in self.sections)
        plotly = f"<script type='text/javascript'>{get_plotlyjs()}</script>" if has_figures else ""
        return (
            "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{_e(self.title or 'report')}</title><style>{_CSS}</style>{plotly}</head>"
            f"<body><main id='top'>{self._header_html()}{nav}{body}</main></body></html>"
        )

    def write(self, path: Path) -> None:
        Path(path).write_text(self.to_html(), encoding="utf-8")


_CSS = """
:root{color-scheme:light;--fg:#1d232b;--muted:#5d6874;--line:#e3e7ec;--bg:#f6f7f9;--card:#fff;--accent:#2f6fde;
--zebra:#f8fafc;--warn-bg:#fff7e6;--warn-line:#f0b64d}
*{box-sizing:border-box}
html{scroll-behavior:smooth}
body{margin:0;background:var(--bg);color:var(--fg);
font:15px/1.55 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,"Noto Sans","Liberation Sans",sans-serif}
main{max-width:1200px;margin:0 auto;padding:28px 28px 64px}
h1{font-size:1.6rem;line-height:1.25;margin:0 0 .2em;font-weight:650;letter-spacing:-.01em;overflow-wrap:anywhere}
h2{font-size:1.15rem;margin:0 0 .7em;font-weight:620}
code,dd,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,"Liberation Mono",monospace;font-size:.86em}
a{color:var(--accent);text-decoration:none}a:hover{text-decoration:underline}
header,nav,section{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:20px 24px;
margin-bottom:18px;box-shadow:0 1px 2px rgba(16,24,40,.04)}
.subtitle{color:var(--muted);margin:0 0 .6em}
.facts{margin:.4em 0 1em;display:flex;flex-wrap:wrap;gap:8px 22px;color:var(--muted)}
.facts strong{color:var(--fg);font-variant-numeric:tabular-nums}
.facts .label{text-transform:uppercase;font-size:.75em;letter-spacing:.06em}
dl.config{display:grid;grid-template-columns:repeat(auto-fill,minmax(230px,1fr));gap:6px 18px;margin:0 0 1.1em;
padding:12px 14px;background:var(--bg);border-radius:8px}
dl.config div{min-width:0}
dl.config dt{font-size:.8em;color:var(--muted)}
dl.config dd{margin:0;overflow-wrap:anywhere}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(200px,1fr));gap:12px;margin:0 0 1em}
.card{border:1px solid var(--line);border-radius:8px;padding:10px 12px;background:#fff}
.card .name{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.8em;color:var(--muted)}
.card .value{font-size:1.55rem;font-weight:650;font-variant-numeric:tabular-nums;line-height:1.3}
.card .meaning{font-size:.8em;color:var(--muted);line-height:1.35}
.advice{background:var(--warn-bg);border-left:4px solid var(--warn-line);border-radius:6px;padding:10px 16px;margin-top:6px}
.advice h2{font-size:.8rem;text-transform:uppercase;letter-spacing:.06em;margin:0 0 .3em;color:#8a5a00}
.advice ul{margin:0;padding-left:1.2em}.advice li{margin:.2em 0}
nav ol{columns:3 240px;column-gap:28px;margin:0;padding-left:1.4em}
nav li{break-inside:avoid;margin:.1em 0}
section{scroll-margin-top:12px}
section h2 .up{font-size:.8em;margin-left:.3em;opacity:.35}section h2 .up:hover{opacity:1;text-decoration:none}
.note{color:var(--muted);margin:0 0 .6em;font-size:.92em}
.text{margin:0;white-space:pre-line;max-width:80ch}
.table-wrap{display:inline-block;vertical-align:top;max-width:100%;overflow:auto;max-height:36rem;
border:1px solid var(--line);border-radius:8px}
.table-wrap.all{max-height:none}
table.data{border-collapse:separate;border-spacing:0;font-size:13.5px}
table.data th,table.data td{padding:5px 12px;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}
table.data thead th{position:sticky;top:0;z-index:1;background:#eef1f5;font-weight:600;white-space:nowrap}
table.data tbody tr:nth-child(even){background:var(--zebra)}
table.data tbody tr:hover{background:#eef4ff}
table.data tbody tr:last-child td,table.data tbody tr:last-child th{border-bottom:0}
table.data .num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
table.data td{max-width:48ch;overflow-wrap:break-word}
table.kv tbody th{font-weight:normal;white-space:nowrap}
table.kv td.meaning{color:var(--muted);max-width:70ch}
.figure{overflow-x:auto}
@media print{body{background:#fff}header,nav,section{box-shadow:none;break-inside:avoid}.table-wrap{max-height:none}}
"""
