"""The ``notify`` step: a JSON POST of the document's outcome, signed, delivered once.

Headers: ``X-Demat-Delivery`` (the same on every retry of one outcome, so the receiver keeps
one), ``X-Demat-Timestamp`` and ``X-Demat-Signature: sha256=<hex>``, an HMAC-SHA256 under
the entity's secret of ``<timestamp>.<body>``. 2xx is done; 408, 425, 429 and 5xx are
retried on the usual ladder; any other answer is refused (permanent), quoting the peer.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

import aiohttp

from broker.connector import REJECTION, Done, Outcome, PermanentError, StepContext, settings_of
from connectors.base import error_for_status, transient_from
from connectors.callback.settings import CallbackSettings

# Files the receiver is given a link to, by role.
_LINKED = frozenset({"acquit", "pes_signe", "atr"})
SIGNATURE_HEADER = "X-Demat-Signature"
DELIVERY_HEADER = "X-Demat-Delivery"
TIMESTAMP_HEADER = "X-Demat-Timestamp"


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """What the receiver recomputes: ``sha256=`` and the hex HMAC of ``<timestamp>.<body>``."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


def payload(ctx: StepContext) -> dict[str, Any]:
    """What the finance software is told: the document, its outcome and its errors, and
    where to fetch what came back (the acquit...)."""
    meta = ctx.metadata
    rejection = meta.get(REJECTION)
    base = f"/api/v1/documents/{ctx.document_id}"
    return {
        "document": ctx.document_id, "flow": ctx.flow, "entity": ctx.entity,
        "state": "rejected" if rejection else "completed", "nom_fic": meta.get("nom_fic"),
        "reason": rejection.get("reason") if isinstance(rejection, dict) else None,
        "errors": meta.get("errors", []),
        "links": {"document": base, **{
            f.role: f"{base}/files/{f.id}" for f in ctx.files if f.role in _LINKED}},
    }


def _target(settings: CallbackSettings, ctx: StepContext) -> str:
    asked = ctx.metadata.get("callback_url")
    if not asked:
        return str(settings.url)
    if any(str(asked).startswith(str(prefix)) for prefix in settings.allowed):
        return str(asked)
    raise PermanentError(f"callback_url {asked!r} is not under an allowed prefix of entity "
                         f"{ctx.entity} (connectors.callback.allowed)")


class CallbackConnector:
    """POSTs each outcome to the entity's webhook, signed, once per outcome."""

    name = "callback"
    steps = frozenset({"notify"})
    settings_key = "callback"
    settings = CallbackSettings
    serves = frozenset({("helios", "notify")})

    async def run(self, ctx: StepContext) -> Outcome:
        if not ctx.config and not ctx.metadata.get("callback_url"):
            # Software that polls the API instead: nothing to tell.
            return Done(note="no webhook configured for the entity (connectors.callback)")
        settings = settings_of(CallbackSettings, ctx.config, ctx.entity, "callback")
        secret = settings.secret("signing_secret")
        if not secret:
            raise PermanentError(f"entity {ctx.entity}: connectors.callback.signing_secret is "
                                 "required (the receiver checks each call's signature)")
        url = _target(settings, ctx)
        told = payload(ctx)
        body = json.dumps(told, ensure_ascii=False, sort_keys=True).encode()
        delivery = f"{ctx.document_id}:{ctx.step}:{told['state']}"
        what = f"callback {url}"

        async def post() -> None:
            stamp = str(int(time.time()))
            headers = {"Content-Type": "application/json", DELIVERY_HEADER: delivery,
                       TIMESTAMP_HEADER: stamp, SIGNATURE_HEADER: signature(secret, stamp, body)}
            try:
                async with ctx.http.post(url, data=body, headers=headers,
                                         timeout=aiohttp.ClientTimeout(total=settings.timeout)
                                         ) as resp:
                    await error_for_status(resp, what)
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise transient_from(exc, what) from exc

        await ctx.call(post)
        return Done(note=f"told {url} (delivery {delivery})")
