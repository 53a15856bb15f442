"""The classification (7-2 ``RetourClassification``): natures with their typology, matières.

It is stored per entity as JSON and every act is checked against the current one.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from lxml import etree
from pydantic import BaseModel, ConfigDict, Field, field_serializer

from connectors.actes.natures import find_nature
from connectors.actes.xmlbind import ActesModel, children, local, qualified, read_attr

Code = tuple[int, ...]
MAX_LEVELS = 5
CODE_RULE = "numbers separated by dots, like 1.1 or 7.10.2"


def parse_code(code: str, *, min_levels: int = 1) -> Code:
    """``"1.1.2"`` → ``(1, 1, 2)``; ``ValueError`` saying why when it is not a code."""
    parts = code.strip().split(".")
    if not all(p.isdigit() and p.isascii() for p in parts):
        raise ValueError(f"classification code {code!r} is not made of {CODE_RULE}")
    if not min_levels <= len(parts) <= MAX_LEVELS:
        raise ValueError(
            f"classification code {code!r} has {len(parts)} level(s): "
            f"{min_levels} to {MAX_LEVELS} are expected ({CODE_RULE})"
        )
    return tuple(int(p) for p in parts)


def format_code(code: Code) -> str:
    return ".".join(str(c) for c in code)


class NatureInfo(BaseModel):
    model_config = ConfigDict(frozen=True)

    abbr: str
    label: str
    # CodeTypePJ → label; empty in classifications older than the typology (2017).
    pj_types: dict[str, str] = {}


class Classification(ActesModel, root="RetourClassification", code="7-2"):
    """A ``RetourClassification``: what @CTES accepts for one entity since ``date``."""

    date: dt.date
    natures: dict[int, NatureInfo] = Field(default_factory=dict)
    matieres: frozenset[Code] = frozenset()
    labels: dict[str, str] = Field(default_factory=dict)  # "1.1" → label

    @field_serializer("matieres")
    def _sorted(self, value: frozenset[Code]) -> list[Code]:
        return sorted(value)

    def has_code(self, code: str) -> bool:
        try:
            return parse_code(code) in self.matieres
        except ValueError:
            return False

    def children(self, parent: Code) -> list[Code]:
        return sorted(c for c in self.matieres if len(c) == len(parent) + 1 and c[:-1] == parent)

    def label(self, code: str) -> str | None:
        return self.labels.get(code)

    def typology(self, nature_code: int) -> dict[str, str] | None:
        """The typology codes listed for a nature, or None when the classification has none."""
        info = self.natures.get(nature_code)
        return dict(info.pj_types) if info and info.pj_types else None

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str | bytes) -> Classification:
        return cls.model_validate_json(text)

    # -- XML (the nested tree does not fit the path bindings) -----------------------------

    @classmethod
    def raw(cls, element: etree._Element) -> dict[str, Any]:
        natures: dict[str, Any] = {}
        for wrapper in children(element, ("NaturesActes",)):
            for item in children(wrapper, ("NatureActe",)):
                abbr = read_attr(item, "TypeAbrege") or ""
                # The code attribute is optional in the schema: fall back on the abbreviation.
                code = read_attr(item, "CodeNatureActe")
                known = find_nature(abbr)
                key = code or (str(known.code) if known else abbr)
                natures[key] = {
                    "abbr": abbr,
                    "label": read_attr(item, "Libelle") or "",
                    "pj_types": {
                        read_attr(pj, "CodeTypePJ") or "": read_attr(pj, "Libelle") or ""
                        for pj in children(item, ("TypePJNatureActe",))
                    },
                }
        labels: dict[str, str] = {}
        for wrapper in children(element, ("Matieres",)):
            _walk(wrapper, (), labels)
        day = [(c.text or "").strip() for c in children(element, ("DateClassification",))]
        return {
            "date": day[0] if day else None,
            "natures": natures,
            "matieres": [code.split(".") for code in labels],
            "labels": labels,
        }

    def fill(self, element: etree._Element) -> None:
        etree.SubElement(element, qualified("DateClassification")).text = self.date.isoformat()
        natures = etree.SubElement(element, qualified("NaturesActes"))
        for nature_code, info in sorted(self.natures.items()):
            item = etree.SubElement(natures, qualified("NatureActe"))
            for name, value in (
                ("CodeNatureActe", str(nature_code)),
                ("Libelle", info.label),
                ("TypeAbrege", info.abbr),
            ):
                item.set(qualified(name), value)
            for pj_code, pj_label in info.pj_types.items():
                pj = etree.SubElement(item, qualified("TypePJNatureActe"))
                pj.set(qualified("CodeTypePJ"), pj_code)
                pj.set(qualified("Libelle"), pj_label)
        nodes: dict[Code, etree._Element] = {(): etree.SubElement(element, qualified("Matieres"))}
        closure = {code[:n] for code in self.matieres for n in range(1, len(code) + 1)}
        for code in sorted(closure):
            node = etree.SubElement(nodes[code[:-1]], qualified(f"Matiere{len(code)}"))
            node.set(qualified("CodeMatiere"), str(code[-1]))
            node.set(qualified("Libelle"), self.labels.get(format_code(code), ""))
            nodes[code] = node


def _walk(element: etree._Element, prefix: tuple[str, ...], labels: dict[str, str]) -> None:
    level = len(prefix) + 1
    for item in element:
        if local(item) != f"Matiere{level}":
            continue
        code = (*prefix, (read_attr(item, "CodeMatiere") or "").strip())
        labels[".".join(code)] = read_attr(item, "Libelle") or ""
        _walk(item, code, labels)


def read_classification(data: bytes) -> Classification:
    """A ``RetourClassification`` document, read leniently."""
    from connectors.actes.messages import read_message  # the one entry point for XML bytes

    message = read_message(data)
    if not isinstance(message, Classification):
        raise ValueError(f"expected a RetourClassification, got {message.ROOT}")
    return message
