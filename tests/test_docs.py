"""The README and the docs site: length, the commands CI relies on, links, generated pages, build."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"

# The README's install-and-run and test commands, as .ci/run mirrors them (it installs the
# package with pip and runs pytest): a fresh machine must be able to copy them as they are.
INSTALL_AND_RUN = 'pip install -e ".[dev]" && python run.py'
TEST = "pytest"
DOCS_BUILD = 'pip install -e ".[docs]" && mkdocs serve'
MAX_README_LINES = 170

# [text](target) and ![alt](target); target up to the first space or closing parenthesis.
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
_CODE_SPAN = re.compile(r"`[^`\n]*`")


def _bash_blocks(text: str) -> list[list[str]]:
    """The lines of each ```bash block of a Markdown text."""
    return [
        [line.strip() for line in block.splitlines()]
        for block in re.findall(r"^```bash\n(.*?)^```", text, re.S | re.M)
    ]


def test_readme_is_short_and_keeps_the_quick_start_commands():
    text = README.read_text(encoding="utf-8")
    n_lines = len(text.splitlines())
    assert n_lines <= MAX_README_LINES, (
        f"README.md has {n_lines} lines, more than {MAX_README_LINES}: move detail to docs/"
    )
    blocks = _bash_blocks(text)
    # Each command stands alone in its own code block, so it can be copied as it is.
    assert [INSTALL_AND_RUN] in blocks, f"README.md lost its install command: {INSTALL_AND_RUN}"
    assert [TEST] in blocks, f"README.md lost its test command: {TEST}"
    assert [DOCS_BUILD] in blocks, f"README.md lost its docs command: {DOCS_BUILD}"
    # The install command comes before the test command, as a newcomer runs them.
    flat = [line for block in blocks for line in block]
    assert flat.index(INSTALL_AND_RUN) < flat.index(TEST)


def test_ci_runs_the_readme_commands_as_written():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    commands = [line.strip() for line in ci.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    # Pass 1 runs README's install + default job exactly, then README's test command (slow tests
    # may be deselected there; pass 2 runs them with the extras).
    assert INSTALL_AND_RUN in commands, f".ci/run no longer runs README's install command: {INSTALL_AND_RUN}"
    first_tests = [c for c in commands if c == TEST or c.startswith(TEST + " ")]
    assert first_tests and commands.index(INSTALL_AND_RUN) < commands.index(first_tests[0]), (
        f".ci/run no longer runs README's test command ({TEST}) after its install command"
    )


def _markdown_files() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def _relative_links(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    text = _FENCE.sub("", text)  # links inside code blocks and code spans are not links
    text = _CODE_SPAN.sub("", text)
    links = []
    for target in _LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith(("#", "/")):
            continue  # external (https:, mailto:), same-page anchor or site-absolute
        links.append(target)
    return links


def test_relative_links_point_to_existing_files():
    broken = []
    n_links = 0
    for path in _markdown_files():
        for target in _relative_links(path):
            n_links += 1
            file_part = target.split("#", 1)[0].split("?", 1)[0]
            if not (path.parent / file_part).exists():
                broken.append(f"{path.relative_to(ROOT)}: {target}")
    assert not broken, "links to missing files:\n" + "\n".join(broken)
    assert n_links >= 10  # the README links every docs page


def test_link_checker_finds_a_broken_link(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](https://example.org) [anchor](#x) [gone](missing.md#part) `[code](nope.md)`\n",
        encoding="utf-8",
    )
    assert _relative_links(page) == ["missing.md#part"]


def test_configuration_reference_is_generated_from_conf():
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_config_docs.py")],
        capture_output=True, text=True, check=True, cwd=ROOT,
    )
    committed = (DOCS / "configuration.md").read_text(encoding="utf-8")
    assert committed == result.stdout, (
        "docs/configuration.md is out of date with conf/: regenerate it with "
        "`python scripts/gen_config_docs.py > docs/configuration.md`"
    )


def test_configuration_reference_lists_every_option_and_comment():
    text = (DOCS / "configuration.md").read_text(encoding="utf-8")
    conf = ROOT / "conf"
    for path in sorted(conf.rglob("*.yaml")):
        rel = path.relative_to(conf)
        if rel.parts[0] == "hydra":
            assert f"conf/{rel.as_posix()}" not in text
            continue
        assert f"`conf/{rel.as_posix()}`" in text, f"conf/{rel.as_posix()} is missing"
    # Keys appear with their full command-line names, values and comments as written.
    assert "| `clusterer.linkage` | `ward` | ward \\| complete \\| average \\| single |" in text
    assert "| `metrics.max_quadratic_rows` | `25000` |" in text
    assert "`preprocess.fit_sample_size`" in text and "never copied whole" in text


def test_mkdocs_build_is_strict_clean(tmp_path):
    pytest.importorskip("mkdocs", reason="mkdocs is not installed: pip install -e \".[docs]\"")
    pytest.importorskip("material", reason="mkdocs-material is not installed: pip install -e \".[docs]\"")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site"),
         "--config-file", str(ROOT / "mkdocs.yml")],
        capture_output=True, text=True, cwd=ROOT, env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING" not in result.stderr, result.stderr
    assert (tmp_path / "site" / "index.html").is_file()
    assert (tmp_path / "site" / "configuration" / "index.html").is_file()
