"""ACTES consistency rules: what ties one part of a message to another, a message to the
archive that carries it, and the archive to its name.

The schema judges each element alone; these rules judge them together. Each returns
``Problem``s located by file (archive member) and line; ``docs/validation/actes.md``
lists them with the message each gives and the test that shows it.
"""

from __future__ import annotations

from collections.abc import Iterator

from lxml import etree

from broker.flows.base import Problem
from broker.ids import siren_problem
from broker.sniff import FileKind
from connectors.actes import names
from connectors.actes.classification import Classification
from connectors.actes.envelope import ArchiveContents, Member
from connectors.actes.messages import ARActe, DonneesActe, EnveloppeCLMISILL, EnveloppeMISILLCL
from connectors.actes.natures import NATURES, find_nature
from connectors.actes.problems import located
from connectors.actes.xmlbind import first_named, local

# The extensions a file of each kind may have (the content decides, the name must agree).
_EXTENSIONS = {FileKind.PDF: {"pdf"}, FileKind.XML: {"xml"}, FileKind.PNG: {"png"},
               FileKind.JPEG: {"jpg", "jpeg"}}


def _at(name: str, element: etree._Element) -> str:
    return located(name, element.sourceline)


def _attributes(root: etree._Element, attribute: str) -> Iterator[tuple[etree._Element, str]]:
    """Every element carrying ``attribute`` (any namespace), with its value."""
    for element in root.iter(etree.Element):
        for key, value in element.attrib.items():
            if etree.QName(key).localname == attribute:
                yield element, str(value)


def message_problems(name: str, root: etree._Element, message: object,
                     classification: Classification | None) -> list[Problem]:
    """The rules within one message: identifiers, their checksums and parts, counts."""
    found: list[Problem] = []
    for element, value in _attributes(root, "IDActe"):
        found += _id_acte(name, element, value)
    for element, value in _attributes(root, "SIREN"):
        if local(element) == "Destinataire" and (bad := siren_problem(value)):
            found.append(Problem(_at(name, element), f"Destinataire SIREN: {bad}"))
    if isinstance(message, ARActe):
        found += _acknowledged(name, root, message)
    if isinstance(message, DonneesActe):
        found += _annex_count(name, root, message)
        if classification is not None and message.classification_date != classification.date:
            at = first_named(root, "ClassificationDateVersion")
            found.append(Problem(_at(name, at), (
                f"ClassificationDateVersion {message.classification_date} is not the date of "
                f"the entity's current classification ({classification.date})")))
    return found


def _id_acte(name: str, element: etree._Element, value: str) -> list[Problem]:
    try:
        parsed = names.parse_id_acte(value)
    except ValueError as exc:  # the schema's pattern says so first; a date may still be wrong
        return [Problem(_at(name, element), f"IDActe {value!r}: {exc}")]
    problems = []
    if bad := siren_problem(parsed.siren):
        problems.append(f"its SIREN: {bad}")
    if find_nature(parsed.nature) is None:
        known = ", ".join(n.abbr for n in NATURES)
        problems.append(f"its nature {parsed.nature!r} is none of {known}")
    return [Problem(_at(name, element), f"IDActe {value}: {p}") for p in problems]


def _acknowledged(name: str, root: etree._Element, ar: ARActe) -> list[Problem]:
    """An ARActe's IDActe says the date, number and nature of the act it acknowledges."""
    if ar.acte_recu is None:
        return []
    try:
        parsed = names.parse_id_acte(ar.id_acte)
    except ValueError:
        return []  # said by the IDActe rule
    received = ar.acte_recu
    nature = find_nature(received.code_nature)
    at = first_named(root, "ActeRecu")
    mismatches = [
        (f"date {parsed.date}", f"@Date {received.date}") if received.date
        and received.date != parsed.date else None,
        (f"number {parsed.numero}", f"@NumeroInterne {received.numero_interne}")
        if received.numero_interne != parsed.numero else None,
        (f"nature {parsed.nature}", f"@CodeNatureActe {received.code_nature}")
        if nature is not None and nature.abbr != parsed.nature else None,
    ]
    return [Problem(_at(name, at), f"ActeRecu: the IDActe's {said} but {what}")
            for said, what in filter(None, mismatches)]


def _annex_count(name: str, root: etree._Element, acte: DonneesActe) -> list[Problem]:
    count, declared = len(acte.annexes), acte.nombre_annexes
    paper = acte.document_papier == "O"
    if count == declared or (count < declared and paper):
        return []
    at = first_named(root, "Annexes")
    also = "" if count > declared else " (more are allowed only with DocumentPapier=O)"
    return [Problem(_at(name, at), f"Annexes: @Nombre says {declared}, the message lists "
                    f"{count} annex(es){also}")]


def archive_problems(archive_name: str, contents: ArchiveContents,
                     roots: dict[str, etree._Element]) -> list[Problem]:
    """The rules between the archive, its name, its envelope and its messages."""
    found = _names_agree(archive_name, contents)
    named = {(e.text or "").strip() for root in roots.values() for e in root.iter()
             if local(e) == "NomFichier"}
    listed = {m.name for m in contents.messages} | {contents.envelope_name}
    for member in contents.members:
        if member.name not in listed and member.name not in named:
            found.append(Problem(member.name, "in the archive but neither the envelope, a "
                                 "message it lists nor a file a message names"))
    for member in contents.files:
        found += _extension(member)
    for received in contents.messages:
        if isinstance(received.message, DonneesActe) and isinstance(contents.envelope,
                                                                     EnveloppeCLMISILL):
            found += _file_names(received.name, roots[received.name], received.message)
    return found


def _names_agree(archive_name: str, contents: ArchiveContents) -> list[Problem]:
    envelope, envelope_name = contents.envelope, contents.envelope_name
    if envelope is None or envelope_name is None:
        return []
    try:
        parsed = names.parse_name(envelope_name)
    except ValueError as exc:
        return [Problem(envelope_name, str(exc))]
    if not isinstance(parsed, names.EnvelopeName):
        return [Problem(envelope_name, "an envelope needs an envelope name "
                        "(APP--SIREN--YYYYMMDD-N.xml)")]
    found = []
    siren = envelope.emetteur.siren if isinstance(envelope, EnveloppeCLMISILL) else (
        envelope.destinataire_siren if isinstance(envelope, EnveloppeMISILLCL) else None)
    if siren is not None and parsed.siren != siren:
        who = "IDCL" if isinstance(envelope, EnveloppeCLMISILL) else "Destinataire"
        found.append(Problem(envelope_name, f"the name's SIREN {parsed.siren} is not the "
                             f"{who} SIREN {siren}"))
    # What an authority sends is named after its envelope (received ones get renamed).
    if isinstance(envelope, EnveloppeCLMISILL) and not _named_after(archive_name, envelope_name):
        found.append(Problem(archive_name, "the archive must be named <TdT code>-"
                             f"{envelope_name.removesuffix('.xml')}.tar.gz after its envelope"))
    return found


def _named_after(archive_name: str, envelope_name: str) -> bool:
    """``archive_name`` is what ``names.archive_name`` makes of the envelope's, for its TdT."""
    try:
        parsed = names.parse_name(archive_name)
    except ValueError:
        return False
    return (isinstance(parsed, names.EnvelopeName) and parsed.itc is not None
            and names.archive_name(parsed.itc, envelope_name) == archive_name)


def _extension(member: Member) -> list[Problem]:
    allowed = _EXTENSIONS.get(member.kind)
    extension = member.name.rsplit(".", 1)[-1].lower() if "." in member.name else ""
    if allowed is None or extension in allowed:
        return []
    return [Problem(member.name, f"its content is {member.kind.described} but its name ends "
                    f"in .{extension or '(nothing)'} (expected ."
                    + " or .".join(sorted(allowed)) + ")")]


def _file_names(name: str, root: etree._Element, acte: DonneesActe) -> list[Problem]:
    """The act's files are named after its message: ``[TYPE-]<base>_1`` then ``_2…``."""
    base = name.rsplit("_", 1)[0]
    found = []
    files = [acte.document, *acte.annexes]
    for index, file in enumerate(files, start=1):
        stem = file.nom_fichier.rsplit(".", 1)[0]
        untyped = stem.split("-", 1)[1] if names.type_code(file.nom_fichier) else stem
        if untyped != f"{base}_{index}":
            what = "the act document" if index == 1 else f"annex {index - 1}"
            naming = first_named(root, "NomFichier", file.nom_fichier)
            found.append(Problem(_at(name, naming), (
                f"{what} {file.nom_fichier!r} must be named [TYPE-]{base}_{index}.<ext> "
                "after its message")))
    return found

