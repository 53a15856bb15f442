"""Mounts the dashboard on the API's application."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import aiohttp_jinja2
import jinja2
from aiohttp import web

from broker import engine as eng
from broker.runtime import Runtime
from broker.store.keys import reference
from broker.web import labels, pages
from broker.web.guard import HUB, RUNTIME_KEY, secured
from broker.web.live import LiveHub
from broker.web.session import Failures

HERE = Path(__file__).parent


def _static_url() -> Callable[[str], str]:
    """Each file's URL carries a digest of its content: a changed file is fetched anew."""
    versions = {p.name: hashlib.sha256(p.read_bytes()).hexdigest()[:12]
                for p in (HERE / "static").iterdir()}
    return lambda name: f"/ui/static/{name}?v={versions[name]}"


def setup(app: web.Application, runtime: Runtime) -> None:
    env = aiohttp_jinja2.setup(app, loader=jinja2.FileSystemLoader(HERE / "templates"),
                               autoescape=True, undefined=jinja2.StrictUndefined)
    env.globals.update(static=_static_url(), when=labels.when, duration=labels.duration,
                       size=labels.size, label=labels.label, iso=labels.iso, labels=labels,
                       reference=reference, active_states=eng.ACTIVE)
    app[RUNTIME_KEY] = runtime
    app[HUB] = hub = LiveHub(runtime.transport)
    app[pages.FAILURES] = Failures()

    async def stop_live(_app: web.Application) -> None:
        await hub.stop()

    app.on_shutdown.append(stop_live)
    app.on_response_prepare.append(secured)
    app.add_routes([
        web.get("/", pages.root),
        web.get("/ui", pages.root),
        web.get("/ui/", pages.overview),
        web.get("/ui/connexion", pages.sign_in_form),
        web.post("/ui/connexion", pages.sign_in_post),
        web.post("/ui/deconnexion", pages.sign_out_post),
        web.get("/ui/documents", pages.documents_list),
        web.get("/ui/documents.csv", pages.documents_csv),
        web.get("/ui/documents/{id}", pages.document_page),
        web.get("/ui/documents/{id}/fichiers/{file_id}", pages.download),
        web.get("/ui/documents/{id}/confirmer", pages.confirm_form),
        web.post("/ui/documents/{id}/action", pages.action_post),
        web.post("/ui/documents/{id}/demandes/{name}", pages.request_post),
        web.get("/ui/parking", pages.parking_page),
        web.post("/ui/parking/rejouer", pages.replay_post),
        web.get("/ui/entites", pages.entities_page),
        web.get("/ui/entites/{siren}", pages.entity_page),
        web.post("/ui/entites/{siren}/verifier", pages.entity_check),
        web.get("/ui/live", pages.live),
        web.static("/ui/static", HERE / "static"),
    ])
