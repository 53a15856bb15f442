"""Every PES_Aller the tests build, in one place: the well-made ones and the refused ones.

The conformance test holds the project's verdict on each against the DGFiP's schema;
the intake test sends the refused ones through the API.
"""

from __future__ import annotations

import base64
import gzip
from collections.abc import Callable

from lxml import etree

from simulators.pes_samples import bordereau, pes, piece, pj, sample_pes, signature

OK_BORDEREAU = bordereau(piece("55.22"))
SIGNED = pes(bordereau(piece("55.22"), signed=True), demat="1")


def _with(old: bytes, new: bytes, data: bytes | None = None) -> bytes:
    source = data if data is not None else pes(OK_BORDEREAU)
    assert old in source, old
    return source.replace(old, new, 1)


def _hostile(prolog: str) -> bytes:
    return pes(OK_BORDEREAU).replace(b"\n<n:PES_Aller", f"\n{prolog}\n<n:PES_Aller".encode(), 1)


def signed_whole() -> bytes:
    """A flow signed as a whole: its signature is the root's last child."""
    flow = pes(bordereau(piece("10.00", "45.22")), pjs=(pj("PJ1"),), demat="1")
    return flow.replace(b"</n:PES_Aller>", signature("PES1").encode() + b"</n:PES_Aller>", 1)


def recette(*, total: str = "120.50") -> bytes:
    """A titres flow (PES_RecetteAller): its blocks are spelled differently (MtBordHt,
    BlocPiece without InfoPce, InfoLignePiece)."""
    line = ('<LigneDePiece><BlocLignePiece><InfoLignePiece><IdLigne V="1"/>'
            '<CodProdLoc V="A1"/><Nature V="7066"/><Majo V="0"/><TvaIntraCom V="0"/>'
            '<MtHT V="120.50"/></InfoLignePiece></BlocLignePiece><Tiers><InfoTiers>'
            '<CatTiers V="01"/><NatJur V="01"/><TypTiers V="01"/><Nom V="Dupont"/></InfoTiers>'
            '<Adresse><TypAdr V="1"/><Adr2 V="1 rue Haute"/><CP V="86000"/><CodRes V="0"/>'
            '</Adresse></Tiers></LigneDePiece>')
    block = ('<PES_RecetteAller><EnTeteRecette><IdVer V="2"/></EnTeteRecette>'
             '<Bordereau Id="T1"><BlocBordereau><Exer V="2026"/><IdBord V="3"/>'
             '<DteBordEm V="2026-12-01"/><TypBord V="01"/><NbrPce V="1"/>'
             f'<MtBordHt V="{total}"/></BlocBordereau><Piece><BlocPiece><IdPce V="1"/>'
             f'<TypPce V="01"/><NatPce V="01"/></BlocPiece>{line}</Piece></Bordereau>'
             '</PES_RecetteAller>\n')
    return pes(OK_BORDEREAU).replace(b"</PES_DepenseAller>\n", b"</PES_DepenseAller>\n"
                                     + block.encode(), 1)


def xades_signed() -> bytes:
    """A bordereau signed in XAdES by the parapheur simulator's signer (libxmlsec1)."""
    from simulators.pki import TestCA
    from simulators.xades import sign_element as sign_bordereau

    signer = TestCA.create("Corpus CA", key_type="rsa").issue_signing("Marie Martin")
    root = etree.fromstring(pes(bordereau(piece("55.22")), demat="1"))
    sign_bordereau(next(root.iter("Bordereau")), signer.key_pem, signer.cert_pem)
    data = etree.tostring(root, xml_declaration=True, encoding="ISO-8859-1")
    assert isinstance(data, bytes)
    return data


# Each well-made flow: the project finds no problem in it and the DGFiP's schema takes it.
VALID: dict[str, Callable[[], bytes]] = {
    "sample": lambda: sample_pes("PES_2026_001"),
    "sample-no-pj": lambda: sample_pes("PES_2026_002", pjs=0),
    "sample-one-bordereau": lambda: sample_pes("PES_2026_003", bordereaux=1, pieces=1),
    "sample-many": lambda: sample_pes("PES_2026_004", bordereaux=6, pieces=4, pjs=3,
                                      first_number=9, cod_col="401", id_post="031007"),
    "two-bordereaux-a-pj": lambda: pes(
        bordereau(piece("55.22", ref="PJ1")), bordereau(piece("10", "5"), ident="B2",
                                                        total="15"), pjs=(pj("PJ1"),)),
    "main-budget": lambda: pes(OK_BORDEREAU, cod_bud="00"),
    "signed-placeholder": lambda: pes(bordereau(piece("55.22"), signed=True), demat="1"),
    "signed-whole": signed_whole,
    "recette": recette,
    "xades-signed": xades_signed,
}

# (case, the PES, the words its refusal must hold, the line it names or None)
BAD: list[tuple[str, bytes, str, int | None]] = [
    ("utf8-declared", pes(OK_BORDEREAU, declaration='<?xml version="1.0" encoding="UTF-8"?>'),
     'encoding="ISO-8859-1"', 1),
    ("no-declaration", pes(OK_BORDEREAU, declaration=""), 'encoding="ISO-8859-1"', 1),
    ("late-declaration", pes(OK_BORDEREAU, declaration='<?xml version="1.0"' + " " * 40
                             + 'encoding="ISO-8859-1"?>'), "first 50 bytes", 1),
    ("utf8-bytes", _with("Commune de démo".encode("latin-1"), "Commune de démo".encode()),
     "UTF-8", 4),
    ("c1-byte", _with("démo".encode("latin-1"), b"d\x80mo"), "no ISO-8859-1 character", 4),
    ("nomfic-missing", _with(b'<NomFic V="mandats_2026_12"/>', b""), "Expected is ( NomFic )",
     3),
    ("nomfic-accents", pes(OK_BORDEREAU, nom_fic="mandats_décembre"), "accents", 3),
    ("idcoll-checksum", pes(OK_BORDEREAU, id_coll="21400015000019"), "not a valid SIRET", 4),
    ("idcoll-short", pes(OK_BORDEREAU, id_coll="2140001500001"), "not a valid SIRET", 4),
    ("idcoll-letters", pes(OK_BORDEREAU, id_coll="2140001500001A"), "not a valid SIRET", 4),
    ("codcol-zero", pes(OK_BORDEREAU, cod_col="000"), "The value '000' is not accepted", 4),
    ("codcol-long", pes(OK_BORDEREAU, cod_col="4000"), "CodCol '4000'", 4),
    ("codcol-empty", pes(OK_BORDEREAU, cod_col=""), "CodCol ''", 4),
    ("codbud-short", pes(OK_BORDEREAU, cod_bud="1"), "CodBud '1'", 4),
    ("codbud-long", pes(OK_BORDEREAU, cod_bud="001"), "CodBud '001'", 4),
    ("idpost-short", pes(OK_BORDEREAU, id_post="12345"), "IdPost '12345'", 4),
    ("idpost-letters", pes(OK_BORDEREAU, id_post="ABCDEF"), "IdPost 'ABCDEF'", 4),
    ("bordereau-no-id", pes(bordereau(piece("55.22"), ident=None)), "needs an Id", 6),
    ("bordereau-same-id", pes(OK_BORDEREAU, OK_BORDEREAU), "already the Id", 7),
    ("signature-same-id", _with(b"<ds:Signature ", b'<ds:Signature Id="B1" ', SIGNED),
     "already the Id of the ds:Signature", 6),
    ("root-same-id", _with(b"<n:PES_Aller ", b'<n:PES_Aller Id="B1" ', SIGNED),
     "already the Id of the bordereau", 2),
    ("nbrpce-wrong", pes(bordereau(piece("55.22"), count=3)), "says 3 pièce(s)", 6),
    ("mtbordht-wrong", pes(bordereau(piece("55.22"), total="60.00")), "add up to 55.22", 6),
    ("amount-nan", pes(bordereau(piece("cinq"), total="0")),
     "'cinq' is not a valid value of the atomic type 'V_Montant_Light'", 6),
    # Decimal's own words for no number at all: refused, never a crash of the sums.
    ("amount-snan", pes(bordereau(piece("sNaN"), total="sNaN")),
     "'sNaN' is not a valid value of the atomic type 'V_Montant_Light'", 6),
    ("amount-huge-exponent", pes(bordereau(piece("1e400000000"), total="1e400000000")),
     "'1e400000000' is not a valid value", 6),
    ("demat-unsigned", pes(OK_BORDEREAU, demat="1"), "needs a signed flow", None),
    ("signed-not-demat", pes(bordereau(piece("55.22"), signed=True), demat="0"),
     "must say 1", None),
    ("pj-not-base64", pes(OK_BORDEREAU, pjs=(pj("PJ1", raw="pas du base64 !"),)),
     "is not a valid value of the atomic type 'xs:base64Binary'", 8),
    ("pj-not-gzip", pes(OK_BORDEREAU, pjs=(pj("PJ1", raw=base64.b64encode(b"%PDF").decode()),)),
     "not gzip", 8),
    ("pj-cut", pes(OK_BORDEREAU, pjs=(pj("PJ1", raw=base64.b64encode(
        gzip.compress(b"%PDF-1.4 " * 500)[:40]).decode()),)), "cut short", 8),
    ("pjref-unresolved", pes(bordereau(piece("55.22", ref="PJ9")), pjs=(pj("PJ1"),)),
     "points at no PJ", 6),
    ("empty-pes", pes(), "an empty PES", None),
    ("bordereau-untyped", _with(b'<TypBord V="01"/>', b""), "Expected is ( TypBord )", 6),
    ("pj-undescribed", _with(b'<Description V="Facture"/>', b"",
                             pes(OK_BORDEREAU, pjs=(pj("PJ1"),))),
     "Expected is one of ( TypePJ, Description )", 8),
    ("doctype", _hostile("<!DOCTYPE n:PES_Aller>"), "DOCTYPE", 2),
    ("billion-laughs", _hostile('<!DOCTYPE x [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]>'),
     "DOCTYPE", 2),
    ("external-entity", _hostile('<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'),
     "DOCTYPE", 2),
    ("parameter-entity", _hostile('<!DOCTYPE x [<!ENTITY % p SYSTEM "http://127.0.0.1:9/x">'
                                  '%p;]>'), "DOCTYPE", 2),
    ("stylesheet", _hostile('<?xml-stylesheet type="text/xsl" href="http://127.0.0.1:9/x"?>'),
     "stylesheet", 2),
    ("xinclude", _with(b"<EnTetePES>", b'<EnTetePES xmlns:xi="http://www.w3.org/2001/XInclude">'
                       b'<xi:include href="file:///etc/passwd"/>'), "XInclude", None),
    ("utf16-doctype", ('<?xml version="1.0" encoding="UTF-16"?>\n<!DOCTYPE x [<!ENTITY e '
                       'SYSTEM "file:///etc/passwd">]>\n<a>&e;</a>').encode("utf-16"),
     "UTF-16", 1),
    ("not-well-formed", _with(b"</EnTetePES>", b""), "not well-formed", None),
    ("cut-file", pes(OK_BORDEREAU)[:-60], "", None),
    ("garbage", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n", "", None),
    ("json", b'{"PES_Aller": {}}', "", None),
]
