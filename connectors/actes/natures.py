"""The six natures of acts, their codes, abbreviations and file rules."""

from __future__ import annotations

from dataclasses import dataclass

from broker.sniff import FileKind

_DOCUMENTS = frozenset({FileKind.PDF, FileKind.JPEG, FileKind.PNG})

# Annexes of any nature: what the TdTs and @CTES accept.
ANNEX_KINDS = frozenset({FileKind.PDF, FileKind.XML, FileKind.JPEG, FileKind.PNG})

# Electronic signature file: allowed for every nature in the real classifications.
SIGNATURE_PJ = ("99_SE", "Fichier de signature électronique")


@dataclass(frozen=True)
class Nature:
    code: int
    abbr: str
    label: str
    # Typology code of the act itself when none is given (S²LOW's ``type_acte``).
    type_piece: str
    type_piece_label: str
    main_kinds: frozenset[FileKind]

    @property
    def default_pj_types(self) -> dict[str, str]:
        """Typology codes allowed when the classification lists none for this nature."""
        return {self.type_piece: self.type_piece_label, SIGNATURE_PJ[0]: SIGNATURE_PJ[1]}

    def __str__(self) -> str:
        return f"{self.abbr} ({self.code}, {self.label})"


NATURES: tuple[Nature, ...] = (
    Nature(1, "DE", "Délibérations", "99_DE", "Délibération", _DOCUMENTS),
    Nature(2, "AR", "Actes réglementaires", "99_AR", "Acte réglementaire", _DOCUMENTS),
    Nature(3, "AI", "Actes individuels", "99_AI", "Acte individuel", _DOCUMENTS),
    Nature(
        4, "CC", "Contrats, conventions et avenants", "99_DC", "Document contractuel", _DOCUMENTS
    ),
    # Budget documents travel as PDF or as their XML (TOTEM) file, never as a picture.
    Nature(
        5,
        "BF",
        "Documents budgétaires et financiers",
        "99_BU",
        "Document budgétaire",
        frozenset({FileKind.PDF, FileKind.XML}),
    ),
    Nature(6, "AU", "Autres", "99_AU", "Autre document", _DOCUMENTS),
)
_BY_CODE = {n.code: n for n in NATURES}
_BY_ABBR = {n.abbr: n for n in NATURES}

NATURE_RULE = "1 to 6 or " + "/".join(n.abbr for n in NATURES)


def find_nature(value: object) -> Nature | None:
    """The nature for a code (1–6, as int or text) or an abbreviation (DE…AU), or None."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        return None
    if isinstance(value, int):
        return _BY_CODE.get(value)
    text = value.strip()
    if text.isdigit():
        return _BY_CODE.get(int(text))
    return _BY_ABBR.get(text.upper())


def nature(value: object) -> Nature:
    """Like :func:`find_nature`, raising ``ValueError`` with the accepted forms."""
    found = find_nature(value)
    if found is None:
        raise ValueError(f"nature must be {NATURE_RULE}, got {value!r}")
    return found
