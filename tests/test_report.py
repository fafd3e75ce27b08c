"""The run report on its own: one offline HTML file that reads well (no pipeline run needed)."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from embclust.tracking.report import Report, format_number, metric_meaning, score_advice

PLOTLY_JS = get_plotlyjs()


def _figure(title: str) -> go.Figure:
    return go.Figure(go.Scatter(x=[1, 2, 3], y=[3, 1, 2]), layout={"title": title})


def _written(report: Report, tmp_path) -> str:
    path = tmp_path / "report.html"
    report.write(path)
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]  # one file, nothing beside it
    return path.read_text(encoding="utf-8")


def _outside_plotly(text: str) -> str:
    """The page without the inlined plotly.js (whose source mentions URLs it never loads here)."""
    return text.replace(PLOTLY_JS, "")


def test_two_figures_share_one_inlined_plotly_js_and_nothing_is_loaded_from_the_network(tmp_path):
    report = Report(title="run")
    report.add_metrics({"silhouette": 0.25, "n_clusters": 4.0})
    report.add_figure("Map", _figure("map"))
    report.add_figure("Cluster sizes", _figure("sizes"))
    text = _written(report, tmp_path)
    assert text.startswith("<!doctype html>") and text.rstrip().endswith("</html>")
    assert text.count(PLOTLY_JS) == 1
    assert text.count("Plotly.newPlot") >= 2
    assert text.index(PLOTLY_JS) < text.index("Plotly.newPlot")  # loaded before the figures call it
    # no external script, stylesheet, font or image
    assert not re.search(r"<script[^>]*\bsrc\s*=", text, re.I)
    assert not re.search(r"<link\b", text, re.I)
    # (plotly.js's source holds links it only writes into a figure's own links, e.g. its logo)
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", _outside_plotly(text), re.I)
    assert "@import" not in text and "url(" not in _outside_plotly(text)
    assert not re.search(r"https?://", re.sub(r'"plotlyServerURL":\s*"[^"]*"', "", _outside_plotly(text)))
    assert "<style>" in text  # its design is embedded


def test_a_report_without_figures_leaves_plotly_js_out(tmp_path):
    report = Report(title="no figures")
    report.add_text("Note", "just words")
    text = _written(report, tmp_path)
    assert PLOTLY_JS not in text and len(text) < 50_000


def test_table_numbers_are_right_aligned_and_formatted(tmp_path):
    report = Report(title="t")
    table = pd.DataFrame({
        "cluster": ["a", "b"],
        "score": [0.123456789, 2.5],
        "rows": np.array([1234567, 12], dtype=np.int64),
        "size": [10.0, np.nan],
    })
    report.add_table("Profiles", table)
    text = _written(report, tmp_path)
    assert "<td class='num'>0.1235</td>" in text and "0.123456789" not in text
    assert "<td class='num'>1,234,567</td>" in text
    assert "<td class='num'>10</td>" in text and "<td class='num'></td>" in text  # 10.0 as 10, NaN empty
    assert "<th class='num'>score</th>" in text and "<th>cluster</th>" in text
    assert "<td>a</td>" in text  # text stays left-aligned
    assert re.search(r"\.num\{[^}]*text-align:right", text)  # what the class does
    assert "nth-child(even)" in text  # zebra rows


def test_format_number_keeps_sensible_precision():
    assert format_number(0.123456789) == "0.1235"
    assert format_number(1234567) == "1,234,567"
    assert format_number(np.int64(1797)) == "1,797"
    assert format_number(10.0) == "10"
    assert format_number(12345.678) == "12,346"
    assert format_number(-0.5) == "-0.5"
    assert format_number(1.5e-7) == "1.5e-07"
    assert format_number(float("nan")) == "" and format_number(None) == ""
    assert format_number("k=10") == "k=10"


def test_the_header_shows_the_dataset_configuration_key_scores_and_advice(tmp_path):
    report = Report(title="digits KMeans-10")
    report.set_header(
        dataset="digits", rows=1797, columns=64,
        config={"clusterer": "KMeans", "n_clusters": 10, "pca_components": None},
        advice=["knee of inertia (Kneedle): k=8"],
    )
    report.add_metrics({"silhouette": 0.182345678, "davies_bouldin": 1.9, "ari": 0.67, "time/score_s": 0.01,
                        "noise_fraction": 0.0})
    text = _written(report, tmp_path)
    header = text[text.index("<header>"):text.index("</header>")]
    assert "digits" in header and "1,797</strong> rows" in header and "64</strong> columns" in header
    assert "<dt>clusterer</dt><dd>KMeans</dd>" in header and "<dt>n_clusters</dt><dd>10</dd>" in header
    assert "knee of inertia (Kneedle): k=8" in header
    # key scores as cards with their one-line meaning; timings stay out of the header
    assert "0.1823" in header and metric_meaning("silhouette") in header
    assert metric_meaning("davies_bouldin") in header and "lower is better" in metric_meaning("davies_bouldin")
    assert "time/score_s" not in header and "noise_fraction" not in header  # no noise: no card
    # the metrics section lists every metric with its meaning, the exact value on hover
    assert metric_meaning("ari") in text.split("</header>")[1]
    assert "title='0.182346'" in text
    # contents link to each section
    assert "<a href='#metrics'>Metrics</a>" in text and "<section id='metrics'>" in text


def test_the_header_is_optional_and_the_sections_api_stays(tmp_path):
    analyses = Report(title="")
    analyses.add_text("Near-duplicates", "near-duplicates skipped: data with 2 columns")
    analyses.add_table("Empty", pd.DataFrame({"a": []}))
    report = Report("run")
    report.sections.extend(analyses.sections)
    report.sections.extend((f"Best cell: {h}", c) for h, c in analyses.sections)
    assert any("near-duplicates skipped: data with 2 columns" in str(s) for s in report.sections)
    text = _written(report, tmp_path)
    assert "<header>" in text and "class='facts'" not in text and "class='cards'" not in text
    assert "Best cell: Near-duplicates" in text
    # equal headings get distinct anchors
    ids = re.findall(r"<section id='([^']+)'>", text)
    assert len(ids) == len(set(ids)) == 4


def test_user_strings_are_escaped(tmp_path):
    evil = "<script>alert(1)</script>"
    report = Report(title=f"run {evil}")
    report.set_header(dataset=evil, config={evil: evil}, advice=[evil])
    report.add_metrics({evil: 1.0})
    report.add_table(evil, pd.DataFrame({"name": [evil], evil: [1]}), note=evil)
    report.add_text(evil, evil)
    text = _written(report, tmp_path)
    assert evil not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "<script" not in text  # no figure: not even plotly's


def test_score_advice_names_noise_and_unscored_runs():
    (line,) = score_advice({"noise_fraction": 0.4, "n_clusters": 5.0, "silhouette": 0.3})
    assert "40% of the rows are noise" in line and "60%" in line and "min_cluster_size" in line
    assert score_advice({"noise_fraction": 0.0, "n_clusters": 10.0, "silhouette": 0.2}) == []
    assert "not scored" in score_advice({"noise_fraction": 0.0, "n_clusters": 1.0})[0]
    assert "stability 0.40" in score_advice({"silhouette": 0.2, "stability": 0.4})[0]


def test_a_reference_score_gets_a_card_only_when_it_differs_from_the_score(tmp_path):
    report = Report(title="t")
    report.set_header(scores={"silhouette": 0.2, "silhouette_ref": 0.2000000001})
    assert "silhouette_ref" not in _written(report, tmp_path)
    report.set_header(scores={"silhouette": 0.2, "silhouette_ref": 0.1})
    assert "<div class='name'>silhouette_ref</div>" in _written(report, tmp_path)


def test_the_report_renders_offline_in_a_browser_header_first_and_its_figures_drawn(tmp_path):
    """Screenshot test: the page a user opens, in headless Chromium with every other host unreachable."""
    from pathlib import Path

    import pytest

    chromium = "/usr/bin/chromium"
    if not Path(chromium).exists():
        pytest.skip(f"no {chromium} (apt-get install -y --no-install-recommends chromium fonts-liberation)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    report = Report(title="products KMeans-30 (run abc)")
    report.set_header(dataset="products", rows=42_000, columns=768, config={"clusterer": "KMeans(n_clusters=30)"},
                      advice=["The best cell lies at the edge of the grid"])
    report.add_metrics({"silhouette": 0.1234567, "calinski_harabasz": 1234.5, "davies_bouldin": 2.5, "n_clusters": 30})
    report.add_figure("Map", go.Figure(go.Scattergl(x=np.arange(50), y=np.arange(50) ** 0.5, mode="markers")))
    report.add_table("Cluster profiles", pd.DataFrame({"cluster": [0, 1], "size": [25_000, 17_000]}))
    report.write(tmp_path / "report.html")
    requests: list[str] = []
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--host-resolver-rules=MAP * ~NOTFOUND"]
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=args)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.on("request", lambda request: requests.append(request.url))
            page.goto((tmp_path / "report.html").as_uri(), wait_until="load")
            page.wait_for_selector(".main-svg", timeout=30_000)  # plotly drew the figure
            header = page.inner_text("body")
            page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        finally:
            browser.close()
    assert header.index("products") < header.index("Cluster profiles")  # the header comes first
    for text in ("42,000", "768", "KMeans(n_clusters=30)", "0.1235", "edge of the grid", "25,000"):
        assert text in header, text
    assert all(url.startswith(("file:", "data:", "blob:", "about:")) for url in requests), requests
    assert (tmp_path / "report.png").stat().st_size > 10_000
