"""A PES_Aller judged while it streams, by the DGFiP's rules, and its indexed fields.

The file is read once, element by element (each cleared when done), so memory stays flat
whatever its size; a PJ's base64 is decoded and inflated under a cap. Each problem names
the file, the line and the element's path (``PES_DepenseAller/Bordereau[2]/BlocBordereau/
MtBordHT``) and what was expected. The project's PES schema (``schemas/pes``) is
checked in the same pass, by libxml2 as it parses; its problems start with ``schema:``,
the others are the DGFiP's rules no schema says.
"""

from __future__ import annotations

import base64
import binascii
import re
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import IO

from cryptography import x509
from lxml import etree

from broker.flows.base import Problem
from broker.ids import luhn_ok
from broker.xmlsafe import XmlError, XmlInvalid, iter_elements
from connectors.helios.schema import Refusal, Watch, aller_schema, watching
from connectors.helios.xades import Judged, Verdict, verify_bordereau

PES_NS = "http://www.minefi.gouv.fr/cp/helios/pes_v2/Rev0/aller"
DSIG = "http://www.w3.org/2000/09/xmldsig#"
XADES = "http://uri.etsi.org/01903/v1.1.1#"
_PREFIXES = {DSIG: "ds:", XADES: "xad:"}
# The DGFiP takes PES in ISO-8859-1 only, declared at the very start.
ENCODINGS = ("ISO-8859-1",)
MAX_PES_BYTES = 128 * 1024 * 1024
# What one PJ may inflate to (a gzip bomb stops here).
MAX_PJ_BYTES = 64 * 1024 * 1024
_DOMAINS = {"PES_DepenseAller": "depense", "PES_RecetteAller": "recette"}
# A file refused by its schema in every pièce would say so millions of times.
MAX_SCHEMA_PROBLEMS = 50
SCHEMA = "schema: "
# Elements found only inside a bordereau (its end closes them all); the recette spells its
# total MtBordHt.
_IN_BORDEREAU = frozenset({"Exer", "IdBord", "NbrPce", "MtBordHT", "MtBordHt", "Bordereau"})
# The amount of each line of a pièce (mandat: InfoLignePce, titre: InfoLignePiece), as
# plain strings: one call per pièce, no element made.
_LINE_AMOUNTS = etree.XPath("LigneDePiece/BlocLignePiece/*[self::InfoLignePce or "
                            "self::InfoLignePiece]/MtHT/@V", smart_strings=False)
_WHITESPACE = b" \t\r\n"
_UNITS = frozenset({"Enveloppe", "EnTetePES", "Piece", "Bordereau", "PJ", "PES_DepenseAller",
                    "PES_RecetteAller", "PES_Facture", "PES_PJ"})
# Units whose own units are taken off one by one.
_HOLDERS = frozenset({"Bordereau", "PES_DepenseAller", "PES_RecetteAller", "PES_PJ"})
_FORMS = {
    "CodCol": (re.compile(r"[0-9A-Za-z]{3}"), "3 letters or digits"),
    "CodBud": (re.compile(r"[0-9A-Za-z]{2}"), "2 letters or digits"),
    "IdPost": (re.compile(r"[0-9]{6}"), "the 6-digit code of the public accountant's post"),
}


def _lines_total(piece: etree._Element) -> Decimal:
    """What the lines of a pièce add up to (a line without an amount adds nothing: the
    schema says it)."""
    found = _LINE_AMOUNTS(piece)
    values = [v.strip() for v in found if isinstance(v, str)] if isinstance(found, list) else []
    return sum((_amount(v) or Decimal(0) for v in values), Decimal(0))


@dataclass
class Bordereau:
    """A bordereau as read: where it is, its numbers, its amounts."""

    domain: str
    line: int
    path: str
    id: str | None
    exercice: str | None = None
    number: str | None = None
    declared_pieces: int | None = None
    declared_amount: Decimal | None = None
    declared_as: str = "MtBordHT"
    pieces: int = 0
    amount: Decimal = Decimal(0)
    signed: bool = False
    # Its signature's verdict, when trust anchors were given.
    verdict: Verdict | None = None


@dataclass
class PesSummary:
    """The indexed fields of a PES_Aller (they go into the document's metadata)."""

    nom_fic: str | None = None
    id_coll: str | None = None
    cod_col: str | None = None
    cod_bud: str | None = None
    id_post: str | None = None
    dte_str: str | None = None
    bordereaux: list[Bordereau] = field(default_factory=list)
    pj: int = 0
    pj_ids: list[str] = field(default_factory=list)
    signed_whole: bool = False
    info_dematerialisee: bool = False
    # What was let through but must be seen (a signature accepted, its chain not trusted).
    warnings: list[str] = field(default_factory=list)

    @property
    def signed(self) -> bool:
        return self.signed_whole or any(b.signed for b in self.bordereaux)

    @property
    def exercice(self) -> str | None:
        return next((b.exercice for b in self.bordereaux if b.exercice), None)

    def metadata(self) -> dict[str, object]:
        return {
            "nom_fic": self.nom_fic, "id_coll": self.id_coll, "cod_col": self.cod_col,
            "cod_bud": self.cod_bud, "id_post": self.id_post, "dte_str": self.dte_str,
            "exercice": self.exercice, "pieces": sum(b.pieces for b in self.bordereaux),
            "pj": self.pj, "bordereaux": [
                {"domain": b.domain, "id": b.id, "exercice": b.exercice, "number": b.number,
                 "pieces": b.pieces, "amount": str(b.amount), "signed": b.signed}
                for b in self.bordereaux]}


@dataclass
class _Reading:
    name: str
    trust: Sequence[x509.Certificate] | None = None
    accept_untrusted: bool = False
    summary: PesSummary = field(default_factory=PesSummary)
    problems: list[Problem] = field(default_factory=list)
    # Units already taken off the tree, by parent and name: the ranks of those that follow.
    gone: Counter[tuple[etree._Element, str]] = field(default_factory=Counter)
    complete: bool = False
    pj_ids: set[str] = field(default_factory=set)
    pj_refs: list[tuple[str, int, str]] = field(default_factory=list)
    # Each Id seen: what carries it, on which line (xs:ID makes each unique; libxml2 does
    # not check that while it streams).
    ids: dict[str, tuple[str, int]] = field(default_factory=dict)
    id_counts: Counter[str] = field(default_factory=Counter)
    current: Bordereau | None = None

    def say(self, line: int | None, where: object, message: str) -> None:
        at, said = f"{self.name}:{line}" if line else self.name, str(where)
        self.problems.append(Problem(at, f"{said}: {message}" if said else message))

    def where(self, element: etree._Element) -> str:
        """The element's path below the root, ranked: ``…/Bordereau[2]/Piece[3]``."""
        names = []
        for node in (element, *element.iterancestors()):
            parent = node.getparent()
            if parent is None:
                break
            tag = _local(node)
            before = sum(1 for _ in node.itersiblings(node.tag, preceding=True))
            rank = self.gone[(parent, tag)] + before + 1
            prefix = "ds:" if etree.QName(node).namespace == DSIG else ""
            names.append(f"{prefix}{tag}[{rank}]" if rank > 1 else prefix + tag)
        return "/".join(reversed(names))

    def refused(self, refusal: Refusal) -> None:
        """A schema problem, said as the rules' are: file:line, path, what was expected."""
        element = refusal.element
        line = _line(element) if element is not None else refusal.line
        path = self.where(element) if element is not None else refusal.path
        if element is not None and element.getparent() is None:
            path = _local(element)
        attribute = f"/@{refusal.attribute}" if refusal.attribute else ""
        said = f"{path}{attribute}: " if path else ""
        at = f"{self.name}:{line}" if line else self.name
        self.problems.append(Problem(at, f"{SCHEMA}{said}{refusal.reason}"))


class _Where:
    """An element's path, worked out only if a problem is said about it."""

    def __init__(self, reading: _Reading, element: etree._Element) -> None:
        self._r, self._element = reading, element

    def __str__(self) -> str:
        return self._r.where(self._element)


def _v(element: etree._Element) -> str:
    return (element.get("V") or "").strip()


def _line(element: etree._Element) -> int | None:
    line = element.sourceline
    return line if isinstance(line, int) else None


def _local(element: etree._Element) -> str:
    tag = element.tag
    assert isinstance(tag, str)
    return tag.rsplit("}", 1)[-1] if tag[0] == "{" else tag


def check_pes(source: Path | IO[bytes], name: str | None = None,
              max_bytes: int = MAX_PES_BYTES,
              trust: Sequence[x509.Certificate] | None = None, *,
              accept_untrusted: bool = False,
              to_be_signed: bool | None = False) -> tuple[PesSummary, list[Problem]]:
    """Every problem of the PES in ``source`` (streamed once), and what it says.

    With ``trust`` (the platform's anchors), each signed bordereau's XAdES signature is
    verified too, while the bordereau is still whole; with ``accept_untrusted``, one whose
    chain is not trusted is a warning (``summary.warnings``) instead of a problem.
    ``to_be_signed``: the PES goes to the parapheur before the DGFiP (its InfoDematerialisee
    is judged as it will be once signed); None leaves that rule to the caller
    (:func:`dematerialisation_problem`), who knows it later.
    """
    if isinstance(source, Path):
        with source.open("rb") as stream:
            return check_pes(stream, name or source.name, max_bytes, trust,
                             accept_untrusted=accept_untrusted, to_be_signed=to_be_signed)
    reading = _Reading(name or "pes.xml", trust=trust, accept_untrusted=accept_untrusted)
    head = source.read(64)
    if b'encoding="ISO-8859-1"' not in head[:50] and b"encoding='ISO-8859-1'" not in head[:50]:
        reading.say(1, "", "the XML declaration must say encoding=\"ISO-8859-1\" within the "
                    "first 50 bytes (the DGFiP reads nothing else)")
    watch, unread = _read(reading, _Latin1Check(source, head, reading), max_bytes)
    if unread is not None:
        reading.say(unread.line, "", unread.reason)
        return reading.summary, reading.problems
    if not reading.complete:
        # Validating, libxml2 words no fault of form once the schema refused something, nor
        # a file cut between two elements: the root that never closed tells.
        if watch.root is None or _local(watch.root) == "PES_Aller":  # else the schema said it
            reading.say(None, "", "the XML is not well-formed or is cut short: the PES_Aller "
                        "element is never closed")
        return reading.summary, reading.problems
    _after(reading, to_be_signed)
    return reading.summary, reading.problems


def _read(r: _Reading, stream: _Latin1Check,
          max_bytes: int) -> tuple[Watch, XmlError | None]:
    """Streams the PES once, its schema checked as libxml2 parses and each watched element
    judged; what stopped the reading, if anything did."""
    schema, unread = aller_schema(), None
    with watching(Watch(schema, r.refused, MAX_SCHEMA_PROBLEMS)) as watch:
        try:
            for event, element in _events(stream, max_bytes, schema):
                if watch.root is None:
                    watch.seen(element)
                _on(r, event, element)
        except XmlInvalid:
            pass  # every schema problem is said already, where it is
        except XmlError as exc:
            unread = exc
        watch.finish()
    if watch.told_count > MAX_SCHEMA_PROBLEMS:
        r.say(None, "", f"{SCHEMA}{watch.told_count - MAX_SCHEMA_PROBLEMS} more schema "
              "problems not listed")
    return watch, unread


# Only these reach Python; the rest is built by libxml2 and freed with its unit.
_WATCHED = ("NomFic", "IdColl", "CodCol", "CodBud", "IdPost", "DteStr", "InfoDematerialisee",
            "Bordereau", "Exer", "IdBord", "NbrPce", "MtBordHT", "MtBordHt", "Piece", "Signature",
            "PJRef", "PJ", "PES_DepenseAller", "PES_RecetteAller", "PES_Facture", "PES_PJ",
            "Enveloppe", "EnTetePES", "PES_Aller")
_WATCHED_TAGS = [f"{{*}}{t}" for t in _WATCHED]


def _events(stream: _Latin1Check, max_bytes: int,
            schema: etree.XMLSchema) -> Iterator[tuple[str, etree._Element]]:
    return iter(iter_elements(stream, tag=_WATCHED_TAGS,  # type: ignore[arg-type]
                              max_bytes=max_bytes, encodings=ENCODINGS, schema=schema))


def _on(r: _Reading, _event: str, element: etree._Element) -> None:
    tag = _local(element)
    if tag == "Piece":  # most events: the short way
        _piece(r, element)
    else:
        _end(r, tag, element, _line(element))
    # A unit read whole goes: memory holds one pièce or one PJ at a time (one bordereau when
    # signatures are checked: a signature covers all its pièces).
    if tag in _UNITS and not (tag == "Piece" and r.trust is not None):
        parent = element.getparent()
        if parent is not None:
            r.gone[(parent, tag)] += 1
            if tag in _HOLDERS:  # its own units' ranks go with it
                for key in [k for k in r.gone if k[0] is element]:
                    del r.gone[key]
            element.clear()
            parent.remove(element)
    elif tag == "PES_Aller":
        r.complete = True
        if ident := element.get("Id"):
            _own_id(r, ident, "PES_Aller", _line(element), "PES_Aller")


def _end(r: _Reading, tag: str, element: etree._Element, line: int | None) -> None:
    s, above = r.summary, element.getparent()
    parent = _local(above) if above is not None else ""
    where = _Where(r, element)
    if parent == "Parametres" and tag == "NomFic":
        s.nom_fic = _v(element)
        if not s.nom_fic.isascii():
            r.say(line, where, f"NomFic {s.nom_fic!r} holds accents or other non-ASCII "
                  "characters: the DGFiP refuses them")
    elif parent == "EnTetePES" and tag in ("IdColl", "CodCol", "CodBud", "IdPost", "DteStr"):
        value = _v(element)
        setattr(s, {"IdColl": "id_coll", "CodCol": "cod_col", "CodBud": "cod_bud",
                    "IdPost": "id_post", "DteStr": "dte_str"}[tag], value)
        _header_value(r, tag, value, where, line)
    elif tag == "InfoDematerialisee":
        s.info_dematerialisee = s.info_dematerialisee or _v(element) == "1"
    elif tag == "Signature" and etree.QName(element).namespace == DSIG:
        _signature_ids(r, element)
        if parent == "Bordereau":
            if r.current is None:
                r.current = Bordereau("", 0, "", None)
            r.current.signed = True
        elif parent == "PES_Aller":
            s.signed_whole = True
    elif tag in _IN_BORDEREAU:
        if r.current is None:  # its first element: the bordereau is being read
            r.current = Bordereau("", 0, "", None)
        _in_bordereau(r, r.current, tag, parent, element, where, line)
    if tag == "PJRef":
        support, ident = element.find("Support"), element.find("IdUnique")
        if support is not None and _v(support) == "01" and ident is not None:
            r.pj_refs.append((_v(ident), line or 0, str(where)))
    elif tag == "PJ" and parent == "PES_PJ":
        _pj(r, element, where, line)


def _header_value(r: _Reading, tag: str, value: str, where: _Where,
                  line: int | None) -> None:
    if tag == "IdColl" and not (re.fullmatch(r"[0-9]{14}", value) and luhn_ok(value)):
        r.say(line, where, f"IdColl {value!r} is not a valid SIRET (14 digits whose checksum, "
              "Luhn, holds)")
    elif tag in _FORMS:
        pattern, rule = _FORMS[tag]
        if not pattern.fullmatch(value):
            r.say(line, where, f"{tag} {value!r}: expected {rule}")


def _in_bordereau(r: _Reading, b: Bordereau, tag: str, parent: str, element: etree._Element,
                  where: _Where, line: int | None) -> None:
    if parent == "BlocBordereau":
        if tag == "Exer":
            b.exercice = _v(element)
        elif tag == "IdBord":
            b.number = _v(element)
        elif tag == "NbrPce":
            b.declared_pieces = _int(_v(element))
        elif tag in ("MtBordHT", "MtBordHt"):
            b.declared_amount, b.declared_as = _amount(_v(element)), tag
    elif tag == "Bordereau":
        b.domain = _DOMAINS.get(parent, parent)
        b.line, b.path, b.id = line or 0, str(where), element.get("Id")
        _bordereau_done(r, b)
        if b.signed and r.trust is not None:
            # An Id two bordereaux carry makes the signature's reference ambiguous.
            ids = {b.id: r.id_counts[b.id]} if b.id else None
            b.verdict = verdict = verify_bordereau(element, r.trust, ids_in_document=ids)
            if accepted_untrusted(verdict, r.accept_untrusted):
                r.summary.warnings.append(untrusted_warning(f"{r.name}:{b.line}: {b.path}",
                                                            verdict))
            elif not verdict.ok:
                r.say(b.line, f"{b.path}/ds:Signature", f"{verdict.judged}: {verdict.reason}")
        r.current = None


def _piece(r: _Reading, element: etree._Element) -> None:
    if r.current is None:  # no BlocBordereau before it (the schema says so): counted anyway
        r.current = Bordereau("", 0, "", None)
    r.current.pieces += 1
    # The lines' amounts in one XPath call: a PES has millions of lines.
    r.current.amount += _lines_total(element)


def _bordereau_done(r: _Reading, b: Bordereau) -> None:
    r.summary.bordereaux.append(b)
    if not b.id:
        r.say(b.line, b.path, "a bordereau needs an Id (the signature points at it)")
    else:
        _own_id(r, b.id, "bordereau", b.line, b.path)
    if b.declared_pieces is not None and b.declared_pieces != b.pieces:
        r.say(b.line, f"{b.path}/BlocBordereau/NbrPce",
              f"says {b.declared_pieces} pièce(s), the bordereau holds {b.pieces}")
    if b.declared_amount is not None and b.declared_amount != b.amount:
        r.say(b.line, f"{b.path}/BlocBordereau/{b.declared_as}",
              f"says {b.declared_amount}, the lines of its pièces add up to {b.amount}")


def _own_id(r: _Reading, ident: str, what: str, line: int | None, where: object) -> None:
    """An Id is carried once in a PES: a signature's reference must find one element."""
    r.id_counts[ident] += 1
    if ident in r.ids:
        first, at = r.ids[ident]
        r.say(line, where, f"Id {ident!r} is already the Id of the {first} at line {at}: an "
              "Id is carried once in a PES (signatures point at it)")
    else:
        r.ids[ident] = (what, line or 0)


def _signature_ids(r: _Reading, signature: etree._Element) -> None:
    for node in signature.iter():
        ident = node.get("Id")
        if ident and isinstance(node.tag, str):
            name = etree.QName(node)
            what = f"{_PREFIXES.get(name.namespace or '', '')}{name.localname}"
            _own_id(r, ident, what, _line(node), _Where(r, node))


def _pj(r: _Reading, element: etree._Element, where: _Where, line: int | None) -> None:
    r.summary.pj += 1
    ident = element.find("IdUnique")
    if ident is not None:
        r.pj_ids.add(_v(ident))
        r.summary.pj_ids.append(_v(ident))
    content = element.find("Contenu/Fichier")
    if content is None:
        return
    what = f"{where}/Contenu/Fichier"
    try:
        text = (content.text or "").encode("ascii")
        packed = base64.b64decode(text.translate(None, _WHITESPACE), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        return  # the schema says it is not base64, where it is
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        size = len(inflater.decompress(packed, MAX_PJ_BYTES + 1))
    except zlib.error as exc:
        r.say(_line(content) or line, what, f"not gzip once base64-decoded ({exc})")
        return
    if size > MAX_PJ_BYTES or inflater.unconsumed_tail:
        r.say(_line(content) or line, what, f"inflates past the {MAX_PJ_BYTES} bytes a PJ "
              "may hold")
    elif not inflater.eof:
        r.say(_line(content) or line, what, "the gzip data is cut short")


def accepted_untrusted(verdict: Verdict, accept_untrusted: bool) -> bool:
    """An untrusted chain the platform lets through (with a warning)."""
    return verdict.judged is Judged.UNTRUSTED and accept_untrusted


def untrusted_warning(where: str, verdict: Verdict) -> str:
    return (f"{where}/ds:Signature: {verdict.judged}: {verdict.reason} (accepted: the "
            "platform accepts untrusted chains)")


def dematerialisation_problem(signed: bool, dematerialised: bool,
                              to_be_signed: bool) -> str | None:
    """The DGFiP's InfoDematerialisee rule: 1 only on a signed flow, and a signed flow says 1
    (``to_be_signed``: judged as the PES will be once the parapheur has signed it)."""
    if to_be_signed and signed:
        return ("the PES is signed already: send it unsigned to have it signed, or without "
                "asking for a signature")
    signed = signed or to_be_signed
    if dematerialised and not signed:
        return "InfoDematerialisee: 1 (dematerialised) needs a signed flow; this one has no " \
               "signature"
    if signed and not dematerialised:
        return ("InfoDematerialisee: a signed flow must say 1 (dematerialised); it says 0 or "
                "nothing" + (" (a PES sent for signature says 1 already)" if to_be_signed
                             else ""))
    return None


def _after(r: _Reading, to_be_signed: bool | None) -> None:
    s = r.summary
    if not s.bordereaux and not s.pj:
        r.say(None, "", "an empty PES: it holds no bordereau and no PJ")
    for ident, line, where in r.pj_refs:
        if ident not in r.pj_ids:
            r.say(line, where, f"PJRef {ident!r} points at no PJ of this flow's PES_PJ")
    if to_be_signed is not None and (said := dematerialisation_problem(
            s.signed, s.info_dematerialisee, to_be_signed)):
        r.say(None, "", said)


def _int(value: str) -> int | None:
    return int(value) if value.isdigit() else None


def _amount(value: str) -> Decimal | None:
    """The amount ``value`` says; None when it is none (the schema says so, where it is):
    NaN, infinities and exponents past cents (``1e400000000``) are no amounts either."""
    try:
        amount = Decimal(value)
    except InvalidOperation:
        return None
    exponent = amount.as_tuple().exponent  # a letter ('n', 'F') when not finite
    return amount if isinstance(exponent, int) and -2 <= exponent <= 18 else None


class _Latin1Check:
    """Passes the bytes on, and says where they are not ISO-8859-1 text: the C1 controls
    (0x80–0x9F, where Windows-1252 puts € and ’) and UTF-8 written as Latin-1."""

    # One pass: a UTF-8 sequence (lead byte, continuation bytes) or a lone C1 byte.
    _SUSPECT = re.compile(rb"[\xc2-\xf4][\x80-\xbf]+|[\x80-\x9f]")
    _UTF8 = re.compile(rb"[\xc2-\xf4][\x80-\xbf]+")

    def __init__(self, stream: IO[bytes], head: bytes, reading: _Reading) -> None:
        self._stream, self._head, self._r = stream, head, reading
        self._lines, self._told = 1, False

    def read(self, size: int = -1) -> bytes:
        if self._head:
            data, self._head = self._head, b""
        else:
            data = self._stream.read(size if size and size > 0 else 64 * 1024)
        if not self._told and data:
            self._look(data)
        self._lines += data.count(b"\n")
        return data

    def _look(self, data: bytes) -> None:
        if data.isascii():  # most of a PES (tags, base64): nothing to look at
            return
        found = self._SUSPECT.search(data)
        if found is None:
            return
        line = self._lines + data.count(b"\n", 0, found.start())
        text = found.group()
        if self._UTF8.fullmatch(text):
            said = (f"bytes {text.hex(' ').upper()} are UTF-8 ({text.decode('utf-8', 'replace')!r}"
                    ") written into an ISO-8859-1 file")
        else:
            said = (f"byte 0x{text[0]:02X} is no ISO-8859-1 character (Windows-1252 puts € or "
                    "’ there)")
        self._r.say(line, "", said)
        self._told = True
