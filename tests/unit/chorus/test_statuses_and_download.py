"""The status rule (what the recipient may set next) and the download reader (a base64
file inside JSON, decoded to disk whatever the chunks' boundaries)."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from connectors.base import PermanentError, TransientError
from connectors.chorus.client import read_download
from connectors.chorus.statuses import NEXT, TransitionRefused, parse_chain, plan


def test_a_chain_is_planned_one_step_at_a_time() -> None:
    changes = plan("MISE_A_DISPOSITION", parse_chain("service_fait; MANDATEE"),
                   numero_dp_mandat="DP-1")
    assert [(c.status, c.numero_dp_mandat) for c in changes] == [("SERVICE_FAIT", None),
                                                                  ("MANDATEE", "DP-1")]


@pytest.mark.parametrize(("current", "chain", "said"), [
    ("MISE_A_DISPOSITION", ["MISE_EN_PAIEMENT"], "allowed from MISE_A_DISPOSITION: A_RECYCLER"),
    ("MISE_A_DISPOSITION", ["SERVICE_FAIT", "A_RECYCLER"], "statuts[2] A_RECYCLER"),
    ("REJETEE", ["SERVICE_FAIT"], "the recipient has nothing to set"),
    ("MISE_A_DISPOSITION", ["PAYEE"], "unknown Chorus Pro status"),
    ("MISE_A_DISPOSITION", ["REJETEE"], "REJETEE needs a motif"),
    ("MISE_A_DISPOSITION", ["SUSPENDUE"], "SUSPENDUE needs a motif"),
    ("SERVICE_FAIT", ["MANDATEE"], "MANDATEE needs numeroDPMandat"),
    ("MISE_A_DISPOSITION", [], "no status given"),
])
def test_an_impossible_chain_is_refused_whole(current: str, chain: list[str],
                                              said: str) -> None:
    with pytest.raises(TransitionRefused, match=re.escape(said)):
        plan(current, chain)


def test_a_motif_longer_than_chorus_takes_is_refused() -> None:
    with pytest.raises(TransitionRefused, match="Chorus Pro takes 255"):
        plan("MISE_A_DISPOSITION", ["REJETEE"], motif="x" * 256)


def test_a_completed_invoice_is_processed_as_a_new_one() -> None:
    assert NEXT["COMPLETEE"] == NEXT["MISE_A_DISPOSITION"]


async def _chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start:start + size]


@pytest.mark.parametrize("size", [1, 3, 7, 4096])
async def test_a_download_is_decoded_whatever_the_chunks(tmp_path: Path, size: int) -> None:
    content = bytes(range(256)) * 40
    encoded = base64.b64encode(content).decode()
    # Chorus Pro's encoder escapes the slashes; some encoders break lines.
    text = encoded[:500].replace("/", "\\/") + "\\r\\n" + encoded[500:].replace("/", "\\/")
    body = ('{"codeRetour": 0, "libelle": "CODE PAR DEFAUT", "fichierResultat": "'
            + text + '", "autre": 1}').encode()
    archive = tmp_path / "groupe.zip"
    answer = await read_download(_chunks(body, size), archive, "test")
    assert archive.read_bytes() == content
    assert answer["codeRetour"] == 0 and answer["autre"] == 1


async def test_an_answer_without_a_file_is_read_as_json(tmp_path: Path) -> None:
    body = json.dumps({"codeRetour": 20000, "libelle": "Aucune facture"}).encode()
    answer = await read_download(_chunks(body, 5), tmp_path / "groupe.zip", "test")
    assert answer["codeRetour"] == 20000


async def test_a_file_that_is_not_base64_or_cut_short_is_said(tmp_path: Path) -> None:
    with pytest.raises(PermanentError, match="not base64"):
        await read_download(_chunks(b'{"fichierResultat": "ab$d"}', 4), tmp_path / "a", "t")
    with pytest.raises(TransientError, match="ended inside"):
        await read_download(_chunks(b'{"fichierResultat": "abcd', 4), tmp_path / "b", "t")
