"""Print the test ids CI's first pass did not run: those it skipped (a missing extra) and those
it deselected (marked slow), one per line, for the second pass."""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def node_id(classname: str, name: str) -> str:
    if not classname:  # a whole module skipped at import (pytest.importorskip at its top)
        return str(Path(*name.split(".")).with_suffix(".py"))
    parts = classname.split(".")
    for i in range(len(parts), 0, -1):
        path = Path(*parts[:i]).with_suffix(".py")
        if path.is_file():
            return "::".join([str(path), *parts[i:], name])
    return f"{classname}::{name}"


def main(junit: str) -> None:
    skipped = [
        node_id(case.get("classname", ""), case.get("name", ""))
        for case in ET.parse(junit).iter("testcase")
        if case.find("skipped") is not None
    ]
    slow = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "-m", "slow"],
        capture_output=True, text=True, check=False,
    ).stdout.splitlines()
    slow = [line.strip() for line in slow if "::" in line]
    for test in dict.fromkeys([*skipped, *slow]):
        print(test)


if __name__ == "__main__":
    main(sys.argv[1])
