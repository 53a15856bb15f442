"""The project's own ACTES schema (``schemas/actes/``), compiled once."""

from __future__ import annotations

import functools
from pathlib import Path

from lxml import etree

from broker.xmlsafe import load_schema, schema_problems
from connectors import schema_files
from connectors.actes.xmlbind import ACTES_NS, INSEE_NS

SCHEMA_FILE = "actes.xsd"


def schema_dir() -> Path:
    return schema_files.schema_dir("actes", SCHEMA_FILE)


@functools.cache
def project_schema() -> etree.XMLSchema:
    return load_schema(schema_dir() / SCHEMA_FILE)


def violations(root: etree._Element) -> list[tuple[int | None, str]]:
    """Each schema violation of a parsed message as (line, message)."""
    found: list[tuple[int | None, str]] = []
    for problem in schema_problems(project_schema(), root):
        # Qualified names read better with the usual prefixes.
        problem = problem.replace(f"{{{ACTES_NS}}}", "actes:").replace(f"{{{INSEE_NS}}}", "insee:")
        head, _, message = problem.partition(": ")
        line = head.removeprefix("line ")
        found.append((int(line), message) if line.isdigit() else (None, problem))
    return found
