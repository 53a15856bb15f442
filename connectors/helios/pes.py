"""A PES_Aller judged while it streams, by the DGFiP's rules, and its indexed fields.

The file is read once, element by element (each cleared when done), so memory stays flat
whatever its size; a PJ's base64 is decoded and inflated under a cap. Each problem names
the file, the line and the element's path (``PES_DepenseAller/Bordereau[2]/BlocBordereau/
MtBordHT``) and what was expected. The schema check runs beside these rules (see
``connectors.helios.schema`` once it lands); these are what no schema says.
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
from broker.xmlsafe import XmlError, iter_elements
from connectors.helios.xades import verify_bordereau

PES_NS = "http://www.minefi.gouv.fr/cp/helios/pes_v2/Rev0/aller"
DSIG = "http://www.w3.org/2000/09/xmldsig#"
# The DGFiP takes PES in ISO-8859-1 only, declared at the very start.
ENCODINGS = ("ISO-8859-1",)
MAX_PES_BYTES = 128 * 1024 * 1024
# What one PJ may inflate to (a gzip bomb stops here).
MAX_PJ_BYTES = 64 * 1024 * 1024
_DOMAINS = {"PES_DepenseAller": "depense", "PES_RecetteAller": "recette"}
_RANKED = frozenset({"Bordereau", "Piece", "PJ"})
# Elements found only inside a bordereau (its end closes them all).
_IN_BORDEREAU = frozenset({"Exer", "IdBord", "NbrPce", "MtBordHT", "Piece", "Bordereau"})
# The amount of each line of a pièce (mandat: InfoLignePce, titre: InfoLignePiece).
_LINE_AMOUNTS = etree.XPath("LigneDePiece/BlocLignePiece/*[self::InfoLignePce or "
                            "self::InfoLignePiece]/MtHT")
_SPACE = re.compile(rb"\s+")
_UNITS = frozenset({"Enveloppe", "EnTetePES", "Piece", "Bordereau", "PJ", "PES_DepenseAller",
                    "PES_RecetteAller", "PES_Facture", "PES_PJ"})
# Fields whose base type (V_BaseAlphanum) forbids all-zero values; CodBud "00" is the
# main budget and stays.
_NO_BLANK = frozenset({"CodCol"})
_FORMS = {
    "CodCol": (re.compile(r"[0-9A-Za-z]{3}"), "3 letters or digits"),
    "CodBud": (re.compile(r"[0-9A-Za-z]{2}"), "2 letters or digits"),
    "IdPost": (re.compile(r"[0-9]{6}"), "the 6-digit code of the public accountant's post"),
}


def _line_amounts(piece: etree._Element) -> list[etree._Element]:
    found = _LINE_AMOUNTS(piece)
    return [e for e in found if isinstance(e, etree._Element)] if isinstance(found, list) else []


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
    pieces: int = 0
    amount: Decimal = Decimal(0)
    signed: bool = False


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
    summary: PesSummary = field(default_factory=PesSummary)
    problems: list[Problem] = field(default_factory=list)
    # Units (bordereaux, pièces, PJ) read whole so far in the current block / bordereau.
    done: Counter[str] = field(default_factory=Counter)
    pj_ids: set[str] = field(default_factory=set)
    pj_refs: list[tuple[str, int, str]] = field(default_factory=list)
    bordereau_ids: dict[str, int] = field(default_factory=dict)
    id_counts: Counter[str] = field(default_factory=Counter)
    current: Bordereau | None = None

    def say(self, line: int | None, where: object, message: str) -> None:
        at, said = f"{self.name}:{line}" if line else self.name, str(where)
        self.problems.append(Problem(at, f"{said}: {message}" if said else message))

    def where(self, element: etree._Element) -> str:
        """The element's path below the root, units ranked: ``…/Bordereau[2]/Piece[3]``."""
        names = []
        for node in (element, *element.iterancestors()):
            if node.getparent() is None:
                break
            tag = _local(node)
            rank = self.done[tag] + 1 if tag in _RANKED else 1  # an open unit: the next one
            names.append(f"{tag}[{rank}]" if rank > 1 else tag)
        return "/".join(reversed(names))


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
              trust: Sequence[x509.Certificate] | None = None) -> tuple[PesSummary, list[Problem]]:
    """Every problem of the PES in ``source`` (streamed once), and what it says.

    With ``trust`` (the platform's anchors), each signed bordereau's XAdES signature is
    verified too, while the bordereau is still whole.
    """
    if isinstance(source, Path):
        with source.open("rb") as stream:
            return check_pes(stream, name or source.name, max_bytes, trust)
    reading = _Reading(name or "pes.xml", trust=trust)
    head = source.read(64)
    if b'encoding="ISO-8859-1"' not in head[:50] and b"encoding='ISO-8859-1'" not in head[:50]:
        reading.say(1, "", "the XML declaration must say encoding=\"ISO-8859-1\" within the "
                    "first 50 bytes (the DGFiP reads nothing else)")
    counting = _Latin1Check(source, head, reading)
    try:
        for event, element in _events(counting, max_bytes):
            _on(reading, event, element)
    except XmlError as exc:
        reading.say(exc.line, "", exc.reason)
        return reading.summary, reading.problems
    _after(reading)
    return reading.summary, reading.problems


# Only these reach Python; the rest is built by libxml2 and freed with its unit.
_WATCHED = ("NomFic", "IdColl", "CodCol", "CodBud", "IdPost", "DteStr", "InfoDematerialisee",
            "Bordereau", "Exer", "IdBord", "NbrPce", "MtBordHT", "Piece", "Signature",
            "PJRef", "PJ", "PES_DepenseAller", "PES_RecetteAller", "PES_Facture", "PES_PJ",
            "Enveloppe", "EnTetePES")
_WATCHED_TAGS = [f"{{*}}{t}" for t in _WATCHED]


def _events(stream: _Latin1Check, max_bytes: int) -> Iterator[tuple[str, etree._Element]]:
    return iter(iter_elements(stream, tag=_WATCHED_TAGS,  # type: ignore[arg-type]
                              max_bytes=max_bytes, encodings=ENCODINGS))


def _on(r: _Reading, _event: str, element: etree._Element) -> None:
    tag = _local(element)
    _end(r, tag, element, _line(element))
    if tag in _RANKED:
        r.done[tag] += 1
        if tag == "Bordereau":
            r.done["Piece"] = 0
    elif tag in _DOMAINS or tag == "PES_PJ":  # the next block counts its units afresh
        r.done["Bordereau"] = r.done["Piece"] = r.done["PJ"] = 0
    # A unit read whole goes: memory holds one pièce or one PJ at a time (one bordereau when
    # signatures are checked: a signature covers all its pièces).
    if tag in _UNITS and not (tag == "Piece" and r.trust is not None):
        parent = element.getparent()
        if parent is not None:
            element.clear()
            parent.remove(element)


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
        elif tag in _NO_BLANK and (set(value) == {"0"} or value.lower() == "nc"):
            r.say(line, where, f"{tag} {value!r}: an all-zero or 'nc' value is refused (the "
                  "schema's base type forbids it)")


def _in_bordereau(r: _Reading, b: Bordereau, tag: str, parent: str, element: etree._Element,
                  where: _Where, line: int | None) -> None:
    if parent == "BlocBordereau":
        if tag == "Exer":
            b.exercice = _v(element)
        elif tag == "IdBord":
            b.number = _v(element)
        elif tag == "NbrPce":
            b.declared_pieces = _int(_v(element))
        elif tag == "MtBordHT":
            b.declared_amount = _amount(r, element, where, line)
    elif tag == "Piece" and parent == "Bordereau":
        b.pieces += 1
        # The lines' amounts in one XPath call: a PES has millions of lines.
        for amount in _line_amounts(element):
            b.amount += _amount(r, amount, where, line) or Decimal(0)
    elif tag == "Bordereau":
        b.domain = _DOMAINS.get(parent, parent)
        b.line, b.path, b.id = line or 0, str(where), element.get("Id")
        _bordereau_done(r, b)
        if b.signed and r.trust is not None:
            # An Id two bordereaux carry makes the signature's reference ambiguous.
            ids = {b.id: r.id_counts[b.id]} if b.id else None
            verdict = verify_bordereau(element, r.trust, ids_in_document=ids)
            if not verdict.ok:
                r.say(b.line, f"{b.path}/ds:Signature", f"{verdict.judged}: {verdict.reason}")
        r.current = None


def _bordereau_done(r: _Reading, b: Bordereau) -> None:
    r.summary.bordereaux.append(b)
    if b.id:
        r.id_counts[b.id] += 1
    if not b.id:
        r.say(b.line, b.path, "a bordereau needs an Id (the signature points at it)")
    elif b.id in r.bordereau_ids:
        r.say(b.line, b.path, f"Id {b.id!r} is already the Id of the bordereau at line "
              f"{r.bordereau_ids[b.id]}: each bordereau has its own")
    else:
        r.bordereau_ids[b.id] = b.line
    if b.declared_pieces is not None and b.declared_pieces != b.pieces:
        r.say(b.line, f"{b.path}/BlocBordereau/NbrPce",
              f"says {b.declared_pieces} pièce(s), the bordereau holds {b.pieces}")
    if b.declared_amount is not None and b.declared_amount != b.amount:
        r.say(b.line, f"{b.path}/BlocBordereau/MtBordHT",
              f"says {b.declared_amount}, the lines of its pièces add up to {b.amount}")


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
        packed = base64.b64decode(_SPACE.sub(b"", text) if _SPACE.search(text) else text,
                                  validate=True)
    except (binascii.Error, UnicodeEncodeError):
        r.say(_line(content) or line, what, "not base64 (a PJ is gzip, then base64)")
        return
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


def _after(r: _Reading) -> None:
    s = r.summary
    if s.nom_fic is None:
        r.say(None, "Enveloppe/Parametres", "NomFic is missing: the DGFiP matches its acquit by it")
    if not s.bordereaux and not s.pj:
        r.say(None, "", "an empty PES: it holds no bordereau and no PJ")
    for ident, line, where in r.pj_refs:
        if ident not in r.pj_ids:
            r.say(line, where, f"PJRef {ident!r} points at no PJ of this flow's PES_PJ")
    signed = s.signed_whole or any(b.signed for b in s.bordereaux)
    if s.info_dematerialisee and not signed:
        r.say(None, "InfoDematerialisee", "1 (dematerialised) needs a signed flow; this one "
              "has no signature")
    elif signed and not s.info_dematerialisee:
        r.say(None, "InfoDematerialisee", "a signed flow must say 1 (dematerialised); it says "
              "0 or nothing")


def _int(value: str) -> int | None:
    return int(value) if value.isdigit() else None


def _amount(r: _Reading, element: etree._Element, where: _Where,
            line: int | None) -> Decimal | None:
    value = _v(element)
    try:
        return Decimal(value)
    except InvalidOperation:
        at = _Where(r, element) if element.tag == "MtHT" else where
        r.say(_line(element) or line, at, f"{value!r} is not an amount")
        return None


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
