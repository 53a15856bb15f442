"""``demat validate actes FILE``: every problem of an ACTES archive or message, located.

Locations are ``<file or member>:<line>`` when the line is known. Schema violations are
checked against the project's schema, then the business rules of what was found.
"""

from __future__ import annotations

import datetime as dt
import tempfile
from collections.abc import Sequence
from pathlib import Path

from lxml import etree
from pydantic import ValidationError

from broker.flows.base import Problem, UploadedFile
from broker.sniff import FileKind, sniff_file
from broker.xmlsafe import XmlError, parse_file
from connectors.actes import consistency, rules
from connectors.actes.classification import Classification
from connectors.actes.envelope import (
    EnvelopeError,
    Limits,
    Member,
    extract_members,
    interpret,
    metadata_from,
    uploaded_files,
)
from connectors.actes.messages import BY_ROOT, IDCL, DonneesActe, EnveloppeCLMISILL, read_element
from connectors.actes.names import MessageFileName, parse_name
from connectors.actes.natures import find_nature
from connectors.actes.problems import MessageError, located, problems_from
from connectors.actes.schema import violations
from connectors.actes.xmlbind import ACTES_NS, ENCODINGS, first_named, local

# Metadata field → (what it is in the message, the element whose line locates it).
_ACTE_ITEMS = {
    "nature": ("@CodeNatureActe", None),
    "numero": ("@NumeroInterne", None),
    "date": ("@Date", None),
    "objet": ("Objet", "Objet"),
    "classification": ("CodeMatiere", "CodeMatiere1"),
    "type_piece": ("Document", "Document"),
    "type_pj": ("Annexes", "Annexes"),
    "files.acte": ("Document", "Document"),
    "files.annexe": ("Annexes", "Annexes"),
    "files": ("Annexes", "Annexes"),
}


def validate_path(
    path: Path, *, today: dt.date | None = None, classification: Classification | None = None
) -> list[Problem]:
    """Every problem of ``path``, an envelope archive (tar.gz) or a message (XML).

    With the entity's ``classification``, codes and typologies are checked against it.
    """
    today = today or dt.date.today()
    if path.stat().st_size == 0:
        return [Problem(path.name, "empty file: an ACTES archive (tar.gz) or message (XML) "
                        "was expected")]
    kind = sniff_file(path)
    if kind is FileKind.GZIP:
        return _archive(path, today, classification)
    if kind is FileKind.XML:
        root, problems = _xml(path.name, path)
        if root is not None and not problems:
            problems = _rules(path.name, root, today, classification, files=None)
        return problems
    return [
        Problem(
            path.name,
            f"neither an ACTES archive (tar.gz) nor an ACTES message (XML): "
            f"its content is {kind.described}",
        )
    ]


def _xml(name: str, path: Path) -> tuple[etree._Element | None, list[Problem]]:
    try:
        root = parse_file(path, encodings=ENCODINGS)
    except XmlError as exc:
        return None, [Problem(located(name, exc.line), exc.reason)]
    namespace = etree.QName(root).namespace
    if namespace != ACTES_NS:
        found = f"found {namespace}" if namespace else "found none"
        return root, [Problem(located(name, root.sourceline), f"element {local(root)}: namespace "
                              f"{ACTES_NS} expected, {found}")]
    if local(root) not in BY_ROOT:
        return root, [Problem(located(name, root.sourceline), f"{local(root)} is no ACTES message "
                              f"(messages: {', '.join(sorted(BY_ROOT))})")]
    problems = [Problem(located(name, line), message) for line, message in violations(root)]
    return root, problems


def _archive(path: Path, today: dt.date, classification: Classification | None) -> list[Problem]:
    with tempfile.TemporaryDirectory(prefix="actes-validate-") as folder:
        members, problems = extract_members(path, Path(folder), Limits())
        if problems:
            return problems
        # Schema first: it says where, with lines; the reader's view would only repeat it.
        roots: dict[str, etree._Element] = {}
        for member in members:
            if member.kind is not FileKind.XML or member.size > Limits().max_xml_bytes:
                continue  # the reader says so if such a file is a message
            root, found = _xml(member.name, member.path)
            if root is None and not _named_like_a_message(member.name):
                continue  # an unreadable XML annex is the authority's business
            if root is not None and etree.QName(root).namespace != ACTES_NS:
                continue  # an XML annex, not a message
            problems += found
            if root is not None and not found:
                roots[member.name] = root
        if problems:
            return problems
        try:
            contents = interpret(members)
        except EnvelopeError as exc:
            return exc.problems
        if isinstance(contents.envelope, EnveloppeCLMISILL) and contents.envelope_name:
            problems += _sender(contents.envelope_name, contents.envelope.emetteur)
            problems += consistency.message_problems(
                contents.envelope_name, roots[contents.envelope_name], contents.envelope, None)
        elif contents.envelope is not None and contents.envelope_name in roots:
            problems += consistency.message_problems(
                contents.envelope_name, roots[contents.envelope_name], contents.envelope, None)
        problems += consistency.archive_problems(path.name, contents, roots)
        for received in contents.messages:
            problems += _rules(
                received.name,
                roots[received.name],
                today,
                classification,
                files=members,
                sender=_sender_of(contents.envelope),
            )
        return problems


def _named_like_a_message(name: str) -> bool:
    try:
        parsed = parse_name(name)
    except ValueError:
        return False
    return not isinstance(parsed, MessageFileName) or parsed.type_code is None


def _sender_of(envelope: object) -> IDCL | None:
    return envelope.emetteur if isinstance(envelope, EnveloppeCLMISILL) else None


def _sender(name: str, idcl: IDCL) -> list[Problem]:
    found = rules.entity_problems(idcl.siren, idcl.departement, idcl.arrondissement, idcl.nature)
    return [Problem(name, f"IDCL {p.field}: {p.message}") for p in found]


def _rules(
    name: str,
    root: etree._Element,
    today: dt.date,
    classification: Classification | None,
    files: Sequence[Member] | None,
    sender: IDCL | None = None,
) -> list[Problem]:
    try:
        message = read_element(root)
    except MessageError as exc:
        return [Problem(f"{name}:{p.field}", p.message) for p in exc.problems]
    consistent = consistency.message_problems(name, root, message, classification)
    if isinstance(message, EnveloppeCLMISILL):
        return _sender(name, message.emetteur) + consistent
    if not isinstance(message, DonneesActe):
        return consistent
    problems = consistent + _act(name, root, message, today, classification, files)
    if sender is not None:
        problems += _name_matches(name, message, sender)
    return problems


def _placed(name: str, root: etree._Element, found: Sequence[Problem]) -> list[Problem]:
    """Metadata-named problems located in the act message: line, then the item concerned."""
    placed = []
    for problem in found:
        key = problem.field.split("[")[0]
        item, element = _ACTE_ITEMS.get(key, (problem.field, None))
        at = first_named(root, element) if element else root
        placed.append(Problem(located(name, at.sourceline), f"{item}: {problem.message}"))
    return placed


def _act(
    name: str,
    root: etree._Element,
    acte: DonneesActe,
    today: dt.date,
    classification: Classification | None,
    files: Sequence[Member] | None,
) -> list[Problem]:
    found: list[Problem] = []
    try:
        # Without the entity's classification, typology codes cannot be judged: the
        # defaults would refuse the many real codes (32_DP…).
        meta = metadata_from(acte, typology=classification is not None)
    except ValidationError as exc:
        return _placed(name, root, problems_from(exc))
    uploads: list[UploadedFile] = []
    absent: list[Problem] = []
    if files is not None:
        uploads, missing = uploaded_files(acte, files)
        absent = [_absent(name, root, acte, n) for n in missing]
    checked = rules.check_act(meta, uploads, classification, today)
    if absent:  # the absent file is the problem; its count would only repeat it
        checked = [p for p in checked if not p.field.startswith("files")]
    return absent + _placed(name, root, found + checked)


def _absent(name: str, root: etree._Element, acte: DonneesActe, file_name: str) -> Problem:
    """A file the message names that the archive lacks, at the line that names it."""
    item = "Document" if file_name == acte.document.nom_fichier else "Annexes"
    naming = first_named(root, "NomFichier", file_name)
    return Problem(located(name, naming.sourceline),
                   f"{item}: {file_name!r} is named in the message but not in the archive")


def _name_matches(name: str, acte: DonneesActe, sender: IDCL) -> list[Problem]:
    """The message's file name against the act and the envelope's sender."""
    try:
        parsed = parse_name(name)
    except ValueError as exc:
        return [Problem(name, str(exc))]
    nature = find_nature(acte.code_nature)
    expected = (
        sender.departement,
        sender.siren,
        acte.date,
        acte.numero_interne,
        nature.abbr if nature else None,
        "1-1",
    )
    if not isinstance(parsed, MessageFileName):
        return [Problem(name, "an act message needs a message name (DPT-SIREN-DATE-NUM-NA-1-1_k)")]
    got = (parsed.departement, parsed.siren, parsed.date, parsed.numero, parsed.nature, parsed.code)
    if got == expected:
        return []
    shown = "-".join(str(v) for v in expected)
    return [Problem(name, f"the name does not match the act and its envelope (expected {shown})")]
