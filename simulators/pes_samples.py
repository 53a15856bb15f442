"""PES_Aller written for tests, the demo and the benchmark: small builders of each part.

``pes(bordereau(piece("10.00", "45.22")), pjs=(pj("PJ1"),))`` is a valid flow in
ISO-8859-1 by the DGFiP's rules; each argument changes one thing, to break one rule.
"""

from __future__ import annotations

import base64
import gzip
from decimal import Decimal

from connectors.helios.pes import DSIG, PES_NS

SIRET = "21400015000018"  # Luhn holds


def line(amount: str, n: int = 1) -> str:
    return (f'<LigneDePiece><BlocLignePiece><InfoLignePce><IdLigne V="{n}"/>'
            f'<Nature V="60628"/><MtHT V="{amount}"/></InfoLignePce></BlocLignePiece>'
            '</LigneDePiece>')


def piece(*amounts: str, ref: str | None = None) -> str:
    pj = (f'<PJRef><Support V="01"/><IdUnique V="{ref}"/></PJRef>' if ref else "")
    return (f'<Piece><BlocPiece><InfoPce><IdPce V="1"/>{pj}</InfoPce></BlocPiece>'
            + "".join(line(a, i) for i, a in enumerate(amounts, 1)) + "</Piece>")


def bordereau(*pieces: str, ident: str | None = "B1", total: str | None = None,
              count: int | None = None, signed: bool = False, number: str = "12",
              exercice: str = "2026") -> str:
    amount = total if total is not None else "55.22"
    declared = count if count is not None else len(pieces)
    sig = f'<ds:Signature xmlns:ds="{DSIG}"><ds:SignedInfo/></ds:Signature>' if signed else ""
    id_attr = f' Id="{ident}"' if ident else ""
    return (f'<Bordereau{id_attr}><BlocBordereau><Exer V="{exercice}"/><IdBord V="{number}"/>'
            f'<NbrPce V="{declared}"/><MtBordHT V="{amount}"/></BlocBordereau>'
            + "".join(pieces) + f"{sig}</Bordereau>")


def pj(ident: str, content: bytes | None = None, raw: str | None = None) -> str:
    data = raw if raw is not None else base64.b64encode(
        gzip.compress(content if content is not None else b"%PDF-1.4 facture")).decode()
    return (f'<PJ><Contenu><Fichier MIMEType="application/pdf">{data}</Fichier></Contenu>'
            f'<IdUnique V="{ident}"/><NomPJ V="facture.pdf"/></PJ>')


def pes(*bordereaux: str, pjs: tuple[str, ...] = (), nom_fic: str = "mandats_2026_12",
        id_coll: str = SIRET, cod_col: str = "400", cod_bud: str = "01",
        id_post: str = "086016", demat: str | None = None,
        declaration: str = '<?xml version="1.0" encoding="ISO-8859-1"?>') -> bytes:
    info = f'<InfoDematerialisee V="{demat}"/>' if demat is not None else ""
    pes_pj = ('<PES_PJ><EnTetePES_PJ><IdVer V="1"/></EnTetePES_PJ>' + "".join(pjs)
              + "</PES_PJ>") if pjs else ""
    return (f'{declaration}\n<n:PES_Aller xmlns:n="{PES_NS}">\n<Enveloppe><Parametres>'
            f'<Version V="2"/><TypFic V="PESALR2"/><NomFic V="{nom_fic}"/></Parametres>'
            f'</Enveloppe>\n<EnTetePES><DteStr V="2026-12-01"/><IdPost V="{id_post}"/>'
            f'<IdColl V="{id_coll}"/><CodCol V="{cod_col}"/><CodBud V="{cod_bud}"/>'
            f'<LibelleColBud V="Commune de démo"/></EnTetePES>\n<PES_DepenseAller>'
            f'<EnTeteDepense><IdVer V="2"/>{info}</EnTeteDepense>\n'
            + "\n".join(bordereaux) + f"\n</PES_DepenseAller>\n{pes_pj}\n</n:PES_Aller>"
            ).encode("iso8859-1")


def sample_pes(nom_fic: str, *, bordereaux: int = 2, pieces: int = 2, pjs: int = 1,
               first_number: int = 1, id_post: str = "086016", cod_col: str = "400",
               exercice: str = "2026") -> bytes:
    """A valid mandats flow: ``bordereaux`` bordereaux numbered from ``first_number`` with
    ``pieces`` pièces each (their totals right), the first pièce pointing at each PJ."""
    written = []
    for rank in range(bordereaux):
        number = first_number + rank
        amounts = [f"{100 + number}.{rank:02d}" for _ in range(pieces)]
        total = sum((Decimal(a) for a in amounts), Decimal(0))
        refs = [f"{nom_fic}-PJ{n + 1}" for n in range(pjs)] if rank == 0 else []
        made = [piece(a, ref=refs[i] if i < len(refs) else None) for i, a in enumerate(amounts)]
        written.append(bordereau(*made, ident=f"BORD{number}", total=str(total),
                                 number=str(number), exercice=exercice))
    attached = tuple(pj(f"{nom_fic}-PJ{n + 1}", b"%PDF-1.4 facture " + str(n).encode())
                     for n in range(pjs))
    return pes(*written, pjs=attached, nom_fic=nom_fic, id_post=id_post, cod_col=cod_col)
