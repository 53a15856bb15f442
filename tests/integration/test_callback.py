"""The callback connector against the finance software's webhook (the gf simulator), over HTTP."""

from __future__ import annotations

import hmac
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from broker.retry import InCallRetry, RetryPolicy
from connectors.base import REJECTION, Done, PermanentError, StepContext, TransientError
from connectors.callback.connector import CallbackConnector, signature
from simulators.common import serving, stats_of
from simulators.faults import FaultRule
from simulators.gf import build_app

SECRET = "s3cr3t-du-logiciel-financier"
DOC = "01M8TQ0000000000000000HELI"


@pytest.fixture
async def webhook() -> AsyncIterator[tuple[Any, str]]:
    app = build_app(callback_secret=SECRET)
    async with serving(app) as url:
        yield app, url


def context(http: aiohttp.ClientSession, config: dict[str, Any], **metadata: Any) -> StepContext:
    return StepContext(
        document_id=DOC, flow="helios", entity="214000150", step="notify", run=1, kind="run",
        metadata={REJECTION: {"step": "transmit", "reason": "refused by the DGFiP"},
                  "nom_fic": "mandats_2026_12",
                  "errors": ["bordereau 13 (2026): ERREUR_DOUBLON_BORDEREAU: déjà intégré"],
                  **metadata},
        files=[], config=config, refs={}, http=http,
        workdir=Path(tempfile.mkdtemp()),
        retry=InCallRetry(RetryPolicy(in_call_attempts=3, in_call_initial=0.01,
                                      in_call_max=0.02), lambda _record: None))


async def test_an_outcome_is_posted_signed_and_kept_once(webhook: tuple[Any, str]) -> None:
    app, url = webhook
    config = {"url": f"{url}/callbacks", "signing_secret": SECRET}
    async with aiohttp.ClientSession() as http:
        first = await CallbackConnector().run(context(http, config))
        again = await CallbackConnector().run(context(http, config))  # a retry after a crash
        async with http.get(f"{url}/callbacks") as resp:
            received = (await resp.json())["callbacks"]
    assert isinstance(first, Done) and isinstance(again, Done)
    assert list(received) == [f"{DOC}:notify:rejected"]
    told = received[f"{DOC}:notify:rejected"]
    assert (told["document"], told["state"], told["nom_fic"]) == (DOC, "rejected",
                                                                   "mandats_2026_12")
    assert told["reason"] == "refused by the DGFiP"
    assert told["errors"] == ["bordereau 13 (2026): ERREUR_DOUBLON_BORDEREAU: déjà intégré"]
    stats = stats_of(app)
    assert (stats["callbacks"], stats["callback_duplicates"]) == (1, 1)


async def test_a_wrong_secret_is_refused_by_the_receiver_and_not_retried(
        webhook: tuple[Any, str]) -> None:
    app, url = webhook
    async with aiohttp.ClientSession() as http:
        with pytest.raises(PermanentError, match="HTTP 401"):
            await CallbackConnector().run(context(http, {"url": f"{url}/callbacks",
                                                         "signing_secret": "wrong"}))
    assert stats_of(app)["callback_refused"] == 1


async def test_a_receiver_that_fails_is_retried() -> None:
    app = build_app(callback_secret=SECRET,
                    faults=[FaultRule(kind="503", path="/callbacks", count=4, retry_after=0)])
    async with serving(app) as url, aiohttp.ClientSession() as http:
        config = {"url": f"{url}/callbacks", "signing_secret": SECRET}
        # Three tries in the call, all refused: the step is retried later, on the ladder.
        with pytest.raises(TransientError, match="HTTP 503"):
            await CallbackConnector().run(context(http, config))
        assert stats_of(app)["callbacks"] == 0
        assert isinstance(await CallbackConnector().run(context(http, config)), Done)
    assert stats_of(app)["callbacks"] == 1


async def test_a_callback_url_outside_the_allowed_prefixes_is_refused(
        webhook: tuple[Any, str]) -> None:
    _app, url = webhook
    config = {"url": f"{url}/callbacks", "signing_secret": SECRET,
              "allowed": [f"{url}/callbacks"]}
    async with aiohttp.ClientSession() as http:
        with pytest.raises(PermanentError, match="is not under an allowed prefix"):
            await CallbackConnector().run(context(http, config,
                                                  callback_url="http://169.254.169.254/x"))
        done = await CallbackConnector().run(context(http, config,
                                                     callback_url=f"{url}/callbacks?gf=1"))
    assert isinstance(done, Done)


def test_the_signature_is_the_hmac_of_timestamp_and_body() -> None:
    assert signature("k", "1700000000", b"{}") == (
        "sha256=" + hmac.new(b"k", b"1700000000.{}", "sha256").hexdigest())
