"""Write the configuration reference (docs/configuration.md) from the YAML files under conf/.

    python scripts/gen_config_docs.py > docs/configuration.md

Every YAML file under conf/ except conf/hydra/ is listed: conf/config.yaml first, then each
config group with its option files, and for each file its keys (as set on the command line),
their values as written and their comments as written. Hydra's `defaults` lists are shown as
lists. Standard library and PyYAML only; the output depends on nothing but conf/.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
REGENERATE = "python scripts/gen_config_docs.py > docs/configuration.md"

_KEY = re.compile(r"^(?P<indent> *)(?P<key>[^\s#\-][^:]*?):(?:\s+(?P<rest>.*))?$")
_ITEM = re.compile(r"^(?P<indent> *)- (?P<rest>.*)$")


@dataclass
class Entry:
    """One key (or one item of a block list) of a YAML file."""

    path: str
    value: str
    comments: list[str] = field(default_factory=list)
    indent: int = 0
    comment_col: int | None = None  # column of an inline comment, for continuation lines
    is_item: bool = False
    parent: str = ""


@dataclass
class ConfFile:
    rel: str
    package_global: bool = False
    header: list[str] = field(default_factory=list)
    entries: list[Entry] = field(default_factory=list)
    trailing: list[str] = field(default_factory=list)


def _split_inline(text: str) -> tuple[str, str | None, int | None]:
    """Split `value  # comment` into value, comment and the comment's offset in `text`."""
    quote = None
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or text[i - 1] in " \t"):
            return text[:i].rstrip(), text[i + 1 :].strip(), i
    return text.rstrip(), None, None


def _comment_text(line: str) -> str:
    """The text of a comment line, keeping the indentation of code examples (`#   cmd`)."""
    body = line.strip()[1:]
    return body[1:] if body.startswith(" ") else body


def parse(path: Path, rel: str) -> ConfFile:
    text = path.read_text(encoding="utf-8")
    yaml.safe_load(text)  # a file that is not valid YAML stops the script
    conf = ConfFile(rel=rel)
    pending: list[str] = []
    stack: list[tuple[int, str]] = []
    last: Entry | None = None
    seen_key = False
    blank_before_first_key = False
    for raw in text.splitlines():
        line = raw.rstrip()
        stripped = line.strip()
        if not stripped:
            if not seen_key and pending:
                blank_before_first_key = True
                conf.header.extend(pending)
                pending = []
            elif pending:
                conf.trailing.extend(pending)
                pending = []
            last = None
            continue
        if stripped.startswith("#"):
            col = len(line) - len(line.lstrip())
            if stripped.startswith("# @package"):
                conf.package_global = stripped.split()[-1] == "_global_"
                continue
            if last is not None and last.comment_col is not None and col == last.comment_col:
                last.comments.append(_comment_text(line))
                continue
            last = None
            pending.append(_comment_text(line))
            continue
        item = _ITEM.match(line)
        if item:
            indent = len(item["indent"])
            value, comment, offset = _split_inline(item["rest"])
            while stack and stack[-1][0] > indent:
                stack.pop()
            parent = ".".join(k for _, k in stack)
            entry = Entry(path=parent, value=value, comments=pending, indent=indent, is_item=True,
                          parent=parent)
            if comment is not None:
                entry.comments = pending + [comment]
                entry.comment_col = len(item["indent"]) + 2 + offset
            conf.entries.append(entry)
            pending, last = [], entry
            continue
        key = _KEY.match(line)
        if not key:
            raise SystemExit(f"{rel}: cannot read line {raw!r}")
        indent = len(key["indent"])
        if not seen_key:
            seen_key = True
            if pending and not blank_before_first_key:
                conf.header.extend(pending)
                pending = []
        while stack and stack[-1][0] >= indent:
            stack.pop()
        name = key["key"].strip()
        path_ = ".".join([k for _, k in stack] + [name])
        value, comment, offset = _split_inline(key["rest"] or "")
        entry = Entry(path=path_, value=value, comments=pending, indent=indent)
        if comment is not None:
            entry.comments = pending + [comment]
            entry.comment_col = line.index(key["rest"]) + offset
        conf.entries.append(entry)
        stack.append((indent, name))
        pending, last = [], entry
    conf.trailing.extend(pending)
    _place_header(conf, blank_before_first_key)
    return conf


def _place_header(conf: ConfFile, blank_before_first_key: bool) -> None:
    """Decide whether the comments above the first key describe the file or that key.

    They describe the file when a blank line, a `# @package` line, `_target_` or `defaults`
    follows them, or when the file has a single top-level key; otherwise the first key.
    """
    if not conf.header or blank_before_first_key or conf.package_global or not conf.entries:
        return
    first = conf.entries[0]
    top_level = [e for e in conf.entries if e.indent == 0 and not e.is_item]
    if first.path in ("_target_", "defaults") or len(top_level) == 1:
        return
    first.comments = conf.header + first.comments
    conf.header = []


_CODE_SPAN = re.compile(r"(`[^`]*`)")
_ESCAPE = {"\\": "\\\\", "<": "&lt;", "|": "\\|", "*": "\\*"}
_WORD_START_UNDERSCORE = re.compile(r"(?<![0-9A-Za-z])_")


def md_text(text: str) -> str:
    """Comment text as Markdown that renders as written (code spans kept as they are).

    Escaped: `<` (an HTML tag otherwise), `|` (a table cell), `*` and `_` at the start of a word
    (emphasis), backslashes.
    """
    parts = _CODE_SPAN.split(text)
    out = []
    for i, part in enumerate(parts):
        if i % 2:
            out.append(part.replace("|", "\\|"))
        else:
            part = "".join(_ESCAPE.get(ch, ch) for ch in part)
            out.append(_WORD_START_UNDERSCORE.sub(r"\\_", part))
    return "".join(out)


def code(value: str) -> str:
    value = value.replace("|", "\\|")
    return f"`` {value} ``" if "`" in value else f"`{value}`"


def _is_code(line: str) -> bool:
    return line.startswith("  ")


def prose(lines: list[str]) -> list[str]:
    """Comment lines as paragraphs; lines indented under `#` (command examples) as code."""
    out: list[str] = []
    i = 0
    while i < len(lines):
        if _is_code(lines[i]):
            block = []
            while i < len(lines) and _is_code(lines[i]):
                block.append(lines[i])
                i += 1
            width = min(len(b) - len(b.lstrip()) for b in block)
            out += ["```bash", *(b[width:] for b in block), "```", ""]
        else:
            para = []
            while i < len(lines) and not _is_code(lines[i]):
                para.append(lines[i].strip())
                i += 1
            out += [md_text(" ".join(p for p in para if p)), ""]
    return out


def describe(comments: list[str]) -> str:
    return md_text(" ".join(c.strip() for c in comments if c.strip()))


def render_file(conf: ConfFile, prefix: str) -> list[str]:
    out: list[str] = []
    if conf.package_global:
        out += ["`# @package _global_`: its keys are set from the root of the config.", ""]
    out += prose(conf.header)
    items = [e for e in conf.entries if e.is_item]
    keys = [e for e in conf.entries if not e.is_item]
    for parent in dict.fromkeys(e.parent for e in items):
        out += [f"`{parent}`:", ""]
        for e in (e for e in items if e.parent == parent):
            note = describe(e.comments)
            out.append(f"- {code(e.value)}" + (f": {note}" if note else ""))
        out.append("")
    rows = []
    for e in keys:
        if any(i.parent == e.path for i in items):
            continue  # shown as a list above
        if not e.value and not e.comments:
            continue  # a mapping without a comment: its keys are listed with full names
        name = f"{prefix}{e.path}"
        rows.append(f"| {code(name)} | {code(e.value) if e.value else ''} | {describe(e.comments)} |")
    if rows:
        out += ["| key | value | description |", "| --- | --- | --- |", *rows, ""]
    if conf.trailing:
        out += prose(conf.trailing)
    return out


def collect(conf_dir: Path) -> tuple[ConfFile, dict[str, list[tuple[str, ConfFile]]]]:
    top = parse(conf_dir / "config.yaml", "conf/config.yaml")
    groups: dict[str, list[tuple[str, ConfFile]]] = {}
    for path in sorted(conf_dir.rglob("*.yaml")):
        rel = path.relative_to(conf_dir)
        if rel.parts[0] == "hydra" or len(rel.parts) == 1:
            continue
        group = "/".join(rel.parts[:-1])
        groups.setdefault(group, []).append((path.stem, parse(path, f"conf/{rel.as_posix()}")))
    return top, groups


def defaults_of(conf_dir: Path) -> dict[str, object]:
    """The config groups chosen by conf/config.yaml's defaults list, and their option."""
    data = yaml.safe_load((conf_dir / "config.yaml").read_text(encoding="utf-8"))
    chosen: dict[str, object] = {}
    for item in data.get("defaults", []):
        if isinstance(item, dict):
            for k, v in item.items():
                if not k.startswith("override "):
                    chosen[k] = v
    return chosen


def render(conf_dir: Path) -> str:
    top, groups = collect(conf_dir)
    chosen = defaults_of(conf_dir)
    order = [g for g in chosen if g in groups] + sorted(g for g in groups if g not in chosen)
    out = [
        "# Configuration reference",
        "",
        "<!-- Generated from conf/ by scripts/gen_config_docs.py; do not edit by hand.",
        f"     Regenerate with: {REGENERATE} -->",
        "",
        "Every key below can be set on the command line (`python run.py key=value`); a config group's",
        "option is picked with `group=option`, or `+group=option` for the groups that no default",
        "selects. `python run.py --cfg job` prints the resolved config and `python run.py --help`",
        "the groups and the most used keys. Values are shown as written in the YAML files: `???`",
        "must be given, `${...}` is an interpolation (`${seed}` is the top-level `seed`,",
        "`${oc.env:NAME,default}` an environment variable).",
        "",
        "Config groups: " + ", ".join(f"[`{g}`](#{g.replace('/', '')})" for g in order) + ".",
        "",
        "## Top level",
        "",
        "`conf/config.yaml`",
        "",
        *render_file(top, ""),
    ]
    for group in order:
        options = groups[group]
        default = chosen.get(group)
        plus = "" if group in chosen else "+"
        out += [f"## {group}", ""]
        names = ", ".join(f"`{name}`" for name, _ in options)
        if group in chosen:
            picked = "none" if default is None else f"`{default}`"
            out += [f"Pick one with `{group}=<option>` (default: {picked}). Options: {names}.", ""]
        else:
            out += [f"Add one with `+{group}=<option>`. Options: {names}.", ""]
        for name, conf in options:
            out += [f"### {plus}{group}={name}", "", f"`{conf.rel}`", ""]
            prefix = "" if conf.package_global else f"{group.replace('/', '.')}."
            out += render_file(conf, prefix)
    while out and out[-1] == "":
        out.pop()
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conf", type=Path, default=ROOT / "conf", help="the conf/ folder")
    args = parser.parse_args(argv)
    sys.stdout.write(render(args.conf))
    return 0


if __name__ == "__main__":
    sys.exit(main())
