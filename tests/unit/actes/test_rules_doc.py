"""docs/validation/actes.md names a test for every rule: each one it names exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
DOC = ROOT / "docs" / "validation" / "actes.md"


def test_every_test_the_rules_document_names_exists() -> None:
    text = DOC.read_text(encoding="utf-8")
    rows = [line for line in text.splitlines() if re.match(r"\| [XAMR][0-9]+ \|", line)]
    assert len(rows) >= 30, "the rule tables are where they were"
    current = None
    missing = []
    for path, name in re.findall(r"`(?:((?:unit|e2e|conformance|integration)/[\w/]+\.py))?"
                                 r"(?:::(test_\w+))?`", text):
        if path:
            current = ROOT / "tests" / path
            if not current.is_file():
                missing.append(path)
                continue
        if name and current is not None and f"def {name}(" not in current.read_text():
            missing.append(f"{current.name}::{name}")
    assert missing == []
    for row in rows:  # each rule names its test ("same": the one above)
        assert "test_" in row or "conformance/" in row or row.endswith("| same |"), row
