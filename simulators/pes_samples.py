"""PES_Aller written for tests, the demo and the benchmark: small builders of each part.

``pes(bordereau(piece("10.00", "45.22")), pjs=(pj("PJ1"),))`` is a valid flow in
ISO-8859-1, by the DGFiP's PES V2 schema and its rules; each argument changes one thing,
to break one rule.
"""

from __future__ import annotations

import base64
import gzip
import re
from decimal import Decimal

from connectors.helios.pes import DSIG, PES_NS

SIRET = "21400015000018"  # Luhn holds
# Codes of the DGFiP's lists: a mandat (TypPce 01) of ordinary nature (NatPce 01) in an
# ordinary bordereau (TypBord 01).
_ORDINARY = "01"


def line(amount: str, n: int = 1) -> str:
    return (f'<LigneDePiece><BlocLignePiece><InfoLignePce><IdLigne V="{n}"/>'
            f'<Nature V="60628"/><TVAIntraCom V="0"/><MtHT V="{amount}"/></InfoLignePce>'
            '</BlocLignePiece></LigneDePiece>')


def piece(*amounts: str, ref: str | None = None, number: int = 1) -> str:
    pj = (f'<PJRef><Support V="01"/><IdUnique V="{ref}"/></PJRef>' if ref else "")
    return (f'<Piece><BlocPiece><InfoPce><IdPce V="{number}"/><TypPce V="{_ORDINARY}"/>'
            f'<NatPce V="{_ORDINARY}"/>{pj}</InfoPce></BlocPiece>'
            + "".join(line(a, i) for i, a in enumerate(amounts, 1)) + "</Piece>")


def signature(ident: str | None) -> str:
    """A signature in the schema's shape, pointing at ``#ident``; its values are
    placeholders: it holds only for a check that does not verify signatures."""
    placeholder = base64.b64encode(b"not a real signature").decode()
    return (f'<ds:Signature xmlns:ds="{DSIG}"><ds:SignedInfo>'
            '<ds:CanonicalizationMethod Algorithm="http://www.w3.org/2001/10/xml-exc-c14n#"/>'
            '<ds:SignatureMethod Algorithm="http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"/>'
            f'<ds:Reference URI="#{ident or ""}"><ds:DigestMethod '
            'Algorithm="http://www.w3.org/2001/04/xmlenc#sha256"/>'
            f'<ds:DigestValue>{placeholder}</ds:DigestValue></ds:Reference></ds:SignedInfo>'
            f'<ds:SignatureValue>{placeholder}</ds:SignatureValue></ds:Signature>')


def bordereau(*pieces: str, ident: str | None = "B1", total: str | None = None,
              count: int | None = None, signed: bool = False, number: str = "12",
              exercice: str = "2026") -> str:
    amount = total if total is not None else "55.22"
    declared = count if count is not None else len(pieces)
    sig = signature(ident) if signed else ""
    id_attr = f' Id="{ident}"' if ident else ""
    return (f'<Bordereau{id_attr}><BlocBordereau><Exer V="{exercice}"/><IdBord V="{number}"/>'
            f'<DteBordEm V="{exercice}-12-01"/><TypBord V="{_ORDINARY}"/>'
            f'<NbrPce V="{declared}"/><MtBordHT V="{amount}"/></BlocBordereau>'
            + "".join(pieces) + f"{sig}</Bordereau>")


def pj(ident: str, content: bytes | None = None, raw: str | None = None) -> str:
    data = raw if raw is not None else base64.b64encode(
        gzip.compress(content if content is not None else b"%PDF-1.4 facture")).decode()
    return (f'<PJ><Contenu><Fichier MIMEType="application/pdf">{data}</Fichier></Contenu>'
            f'<IdUnique V="{ident}"/><NomPJ V="facture.pdf"/><Description V="Facture"/></PJ>')


def pes(*bordereaux: str, pjs: tuple[str, ...] = (), nom_fic: str = "mandats_2026_12",
        id_coll: str = SIRET, cod_col: str = "400", cod_bud: str = "01",
        id_post: str = "086016", demat: str | None = None,
        declaration: str = '<?xml version="1.0" encoding="ISO-8859-1"?>') -> bytes:
    info = f'<InfoDematerialisee V="{demat}"/>' if demat is not None else ""
    pes_pj = ('<PES_PJ><EnTetePES_PJ><IdVer V="1"/></EnTetePES_PJ>' + "".join(pjs)
              + "</PES_PJ>") if pjs else ""
    # A dépense block holds one bordereau at least: without any, there is no block.
    block = (f'<PES_DepenseAller><EnTeteDepense><IdVer V="2"/>{info}</EnTeteDepense>\n'
             + "\n".join(bordereaux) + "\n</PES_DepenseAller>") if bordereaux else "\n"
    return (f'{declaration}\n<n:PES_Aller xmlns:n="{PES_NS}">\n<Enveloppe><Parametres>'
            f'<Version V="2"/><TypFic V="PESALR2"/><NomFic V="{nom_fic}"/></Parametres>'
            f'</Enveloppe>\n<EnTetePES><DteStr V="2026-12-01"/><IdPost V="{id_post}"/>'
            f'<IdColl V="{id_coll}"/><CodCol V="{cod_col}"/><CodBud V="{cod_bud}"/>'
            f'<LibelleColBud V="Commune de démo"/></EnTetePES>\n{block}\n{pes_pj}\n'
            '</n:PES_Aller>').encode("iso8859-1")


def pj_id(nom_fic: str, n: int) -> str:
    """The IdUnique of a flow's n-th PJ: letters and digits only, as the DGFiP's type says."""
    return re.sub(r"[^0-9A-Za-z]", "", nom_fic)[:45] + f"PJ{n}"


def sample_pes(nom_fic: str, *, bordereaux: int = 2, pieces: int = 2, pjs: int = 1,
               first_number: int = 1, id_post: str = "086016", cod_col: str = "400",
               exercice: str = "2026", demat: str | None = None) -> bytes:
    """A mandats flow valid by the schema and the rules: ``bordereaux`` bordereaux numbered
    from ``first_number`` with ``pieces`` pièces each (their totals right), the first pièce
    pointing at each PJ; ``demat="1"``: InfoDematerialisee as a PES sent to be signed says."""
    written = []
    for rank in range(bordereaux):
        number = first_number + rank
        amounts = [f"{100 + number}.{rank:02d}" for _ in range(pieces)]
        total = sum((Decimal(a) for a in amounts), Decimal(0))
        refs = [pj_id(nom_fic, n + 1) for n in range(pjs)] if rank == 0 else []
        made = [piece(a, ref=refs[i] if i < len(refs) else None, number=i + 1)
                for i, a in enumerate(amounts)]
        written.append(bordereau(*made, ident=f"BORD{number}", total=str(total),
                                 number=str(number), exercice=exercice))
    attached = tuple(pj(pj_id(nom_fic, n + 1), b"%PDF-1.4 facture " + str(n).encode())
                     for n in range(pjs))
    return pes(*written, pjs=attached, nom_fic=nom_fic, id_post=id_post, cod_col=cod_col,
               demat=demat)
