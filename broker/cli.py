"""The ``demat`` command."""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import sys
import tempfile
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import click

from broker import accounts, journal, logs
from broker import engine as eng
from broker.catalog import Catalog
from broker.entity_settings import SettingsError
from broker.runtime import prepare_store
from broker.serve import Roles, run
from broker.settings import Settings
from broker.store import journal as stored_journal
from broker.store.db import make_engine
from broker.wiring import catalog

T = TypeVar("T")

SIMULATORS = ["gf", "parapheur", "tdt", "asalae"]


def _run(coro: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


def _settings(ctx: click.Context) -> Settings:
    settings: Settings = ctx.obj
    return settings


def _data_dir_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--data-dir`` on the command itself too (``demat demo --data-dir D``)."""
    def use(ctx: click.Context, _param: click.Parameter, value: Path | None) -> None:
        if value is not None:
            ctx.obj = Settings(data_dir=value)

    return click.option("--data-dir", type=click.Path(path_type=Path), expose_value=False,
                        callback=use, is_eager=True,
                        help="Where the SQLite store and the files live (DEMAT_DATA_DIR, "
                             "default ./var).")(fn)


@click.group()
@click.option("--data-dir", type=click.Path(path_type=Path), default=None,
              help="Where the SQLite store and the files live (DEMAT_DATA_DIR, default ./var).")
@click.pass_context
def main(ctx: click.Context, data_dir: Path | None) -> None:
    """demat-broker: routes ACTES, HELIOS, Chorus Pro and depot flows between peers."""
    overrides: dict[str, Any] = {"data_dir": data_dir} if data_dir else {}
    settings = Settings(**overrides)
    logs.configure(settings.log_format, settings.log_level)
    ctx.obj = settings


def _serve_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("--port", type=int, default=None, help="API port (DEMAT_PORT).")(fn)
    return click.option("--host", default=None, help="API address (DEMAT_HOST).")(fn)


def _with_listen(settings: Settings, host: str | None, port: int | None) -> Settings:
    updates = {k: v for k, v in (("host", host), ("port", port)) if v is not None}
    return settings.model_copy(update=updates) if updates else settings


@main.command()
@_serve_options
@_data_dir_option
@click.pass_context
def serve(ctx: click.Context, host: str | None, port: int | None) -> None:
    """API, relay and workers in one process (embedded queues unless DEMAT_AMQP_URL)."""
    _run(run(_with_listen(_settings(ctx), host, port), Roles(api=True, relay=True, worker=True)))


@main.command()
@_serve_options
@_data_dir_option
@click.pass_context
def api(ctx: click.Context, host: str | None, port: int | None) -> None:
    """The HTTP API alone (needs DEMAT_AMQP_URL and a shared database)."""
    _run(run(_with_listen(_settings(ctx), host, port), Roles(api=True)))


@main.command()
@click.option("--connector", "connectors", multiple=True,
              help="Serve only these connectors' queues (default: all).")
@_data_dir_option
@click.pass_context
def worker(ctx: click.Context, connectors: tuple[str, ...]) -> None:
    """A worker process consuming connector queues."""
    _run(run(_settings(ctx), Roles(worker=True, connectors=connectors)))


@main.command()
@_data_dir_option
@click.pass_context
def relay(ctx: click.Context) -> None:
    """The relay: publishes due jobs, recovers lost ones, parks poison messages."""
    _run(run(_settings(ctx), Roles(relay=True)))


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("peer", type=click.Choice(SIMULATORS))
@click.option("--port", type=int, default=0)
@click.option("--host", default="127.0.0.1")
@click.pass_context
def simulate(ctx: click.Context, peer: str, port: int, host: str) -> None:
    """Run a peer simulator (extra options go to the simulator, e.g. --fault 503:0.2)."""
    module = importlib.import_module(f"simulators.{peer}")
    module.main(["--host", host, "--port", str(port), *ctx.args])


@main.command()
@click.argument("flow", type=click.Choice(["actes", "pes", "chorus"]))
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--trust", "trust", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="pes: a PEM bundle of trust anchors; each signed bordereau is verified.")
def validate(flow: str, path: Path, trust: Path | None) -> None:
    """Check an ACTES envelope (tar.gz) or message (XML), a PES_Aller, or a Chorus Pro PIVOT
    invoice; print every problem, exit 1 if any."""
    if flow == "chorus":
        from connectors.chorus.pivot import read_pivot

        with tempfile.TemporaryDirectory(prefix="demat-validate-") as work:
            reading = read_pivot(path, Path(work))
        problems = reading.problems
        numbers = ", ".join(i.number for i in reading.invoices)
        verdict = (f"{path.name}: valid PIVOT ({len(reading.invoices)} invoice(s): {numbers}); "
                   f"attachments unpacked safely")
    elif flow == "actes":
        from connectors.actes.validate import validate_path

        problems = validate_path(path)
        verdict = f"{path.name}: valid actes"
    else:
        from cryptography import x509

        from broker.flows.base import Problem
        from connectors.helios.before_sending import verify_whole_flow
        from connectors.helios.pes import check_pes

        anchors = x509.load_pem_x509_certificates(trust.read_bytes()) if trust else None
        summary, problems = check_pes(path, trust=anchors)
        if summary.signed_whole and anchors and not problems:  # one signature of it all
            whole = verify_whole_flow(path, anchors)
            if not whole.ok:
                problems.append(Problem(path.name, f"PES_Aller/ds:Signature: {whole.judged}: "
                                                   f"{whole.reason}"))
        signatures = ", signatures verified" if anchors else ", signatures not judged (--trust)"
        verdict = (f"{path.name}: no problem found by the project's PES schema and the "
                   f"DGFiP rules{signatures}")
    for problem in problems:
        # The field names the file and line, or the archive member (then the archive too).
        own = problem.field == path.name or problem.field.startswith(f"{path.name}:")
        click.echo(f"{'' if own else path.name + ': '}{problem.field}: {problem.message}")
    if problems:
        click.echo(f"{len(problems)} problem(s)", err=True)
        sys.exit(1)
    click.echo(verdict)




@main.command()
@_serve_options
@click.option("--documents", type=int, default=3, help="Sample documents to submit.")
@_data_dir_option
@click.pass_context
def demo(ctx: click.Context, host: str | None, port: int | None, documents: int) -> None:
    """Serve with simulators, a sample entity and sample documents; prints KEY=VALUE lines."""
    from simulators.demo import run_demo

    settings = _settings(ctx)
    if port is None and "DEMAT_PORT" not in os.environ:
        port = 0
    _run(run_demo(_with_listen(settings, host, port), documents))


@main.group()
def token() -> None:
    """API tokens."""


@token.command("create")
@click.option("--entity", help="SIREN: a token that sees and submits for this entity only.")
@click.option("--operator", is_flag=True, help="A platform operator token (sees all, replays).")
@click.option("--label", default="")
@_data_dir_option
@click.pass_context
def token_create(ctx: click.Context, entity: str | None, operator: bool, label: str) -> None:
    """Create a token and print it (only its hash is stored)."""
    if bool(entity) == operator:
        raise click.UsageError("give exactly one of --entity SIREN or --operator")

    async def go(conn: Any) -> str:
        role = accounts.OPERATOR if operator else accounts.ENTITY
        return await accounts.create_token(conn, role, entity, label)

    try:
        click.echo(_with_store(_settings(ctx), go))
    except (accounts.InvalidEntity, SettingsError) as exc:
        raise click.ClickException(str(exc)) from exc


@main.group()
def entity() -> None:
    """Entities (authorities) and their connector endpoints."""


@entity.command("add")
@click.argument("siren")
@click.option("--name", required=True)
@click.option("--set", "sets", multiple=True, metavar="CONNECTOR.KEY=VALUE",
              help="Connector setting, e.g. --set depot.url=http://gf/inbox")
@_data_dir_option
@click.pass_context
def entity_add(ctx: click.Context, siren: str, name: str, sets: tuple[str, ...]) -> None:
    """Add or update an entity."""
    connectors: dict[str, dict[str, Any]] = {}
    for connector, setting, value in map(_setting, sets):
        connectors.setdefault(connector, {})[setting] = value

    built = catalog()

    async def go(conn: Any) -> None:
        await accounts.upsert_entity(conn, siren, name, connectors, built.settings)

    try:
        _with_store(_settings(ctx), go, built)
    except (accounts.InvalidEntity, SettingsError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"entity {siren} saved")


def _setting(item: str) -> tuple[str, str, str]:
    """``CONNECTOR.KEY=VALUE`` → its parts (the settings model gives VALUE its type)."""
    key, sep, value = item.partition("=")
    connector, dot, setting = key.partition(".")
    if not sep or not dot or not connector or not setting:
        raise click.UsageError(f"--set {item!r}: expected CONNECTOR.KEY=VALUE")
    return connector, setting, value


def _with_store(settings: Settings, fn: Callable[[Any], Awaitable[T]],
                built: Catalog | None = None) -> T:
    async def go() -> T:
        engine = await prepare_store(settings, built or catalog())
        try:
            async with engine.begin() as conn:
                return await fn(conn)
        finally:
            await engine.dispose()

    return _run(go())


# --- commands that talk to a running API ---------------------------------------------

def _api_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("--api-url", envvar="DEMAT_API_URL", default="http://127.0.0.1:8080",
                      show_default=True)(fn)
    return click.option("--token", envvar="DEMAT_TOKEN", required=True,
                        help="Bearer token (DEMAT_TOKEN).")(fn)


async def _call(api_url: str, token: str, method: str, path: str, **kwargs: Any) -> Any:
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(headers=headers) as http, http.request(
        method, api_url.rstrip("/") + path, **kwargs
    ) as resp:
        body = await resp.json(content_type=None)
        if resp.status >= 400:
            problems = "".join(f"\n  {p['field']}: {p['message']}"
                               for p in body.get("problems", []))
            raise click.ClickException(f"{resp.status}: {body.get('error')}{problems}")
        return body


def _echo(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False))


@main.command()
@click.argument("flow")
@click.option("--entity", help="SIREN (optional with an entity token).")
@click.option("--meta", "metas", multiple=True, metavar="KEY=VALUE",
              help="Metadata entry; VALUE is JSON when it parses, else a string.")
@click.option("--role", default="document", show_default=True,
              help="Part name for FILE arguments given without ROLE=.")
@click.argument("files", nargs=-1, required=True)
@_api_options
def submit(flow: str, entity: str | None, metas: tuple[str, ...], role: str,
           files: tuple[str, ...], api_url: str, token: str) -> None:
    """Submit FILE... (or ROLE=FILE...) as a document of FLOW."""
    metadata: dict[str, Any] = {}
    for item in metas:
        key, sep, value = item.partition("=")
        if not sep:
            raise click.UsageError(f"--meta {item!r}: expected KEY=VALUE")
        try:
            metadata[key] = json.loads(value)
        except json.JSONDecodeError:
            metadata[key] = value

    async def go() -> Any:
        form = aiohttp.FormData()
        form.add_field("flow", flow)
        if entity:
            form.add_field("entity", entity)
        form.add_field("metadata", json.dumps(metadata))
        handles = []
        try:
            for spec in files:
                part, sep, path = spec.partition("=")
                if not sep or not Path(path).exists():  # noqa: ASYNC240 - a local stat
                    part, path = role, spec
                # Opened here, streamed by aiohttp, closed below after the upload.
                fh = open(path, "rb")  # noqa: SIM115, ASYNC230
                handles.append(fh)
                form.add_field(part, fh, filename=Path(path).name)
            return await _call(api_url, token, "POST", "/api/v1/documents", data=form)
        finally:
            for fh in handles:
                fh.close()

    _echo(_run(go()))


@main.command()
@click.argument("document_id")
@click.option("--journal", "with_journal", is_flag=True, help="Also print the journal.")
@_api_options
def status(document_id: str, with_journal: bool, api_url: str, token: str) -> None:
    """Show a document's state (and journal)."""
    doc = _run(_call(api_url, token, "GET", f"/api/v1/documents/{document_id}"))
    if with_journal:
        doc["journal"] = _run(_call(api_url, token, "GET",
                                    f"/api/v1/documents/{document_id}/journal"))
    _echo(doc)


@main.group()
def classification() -> None:
    """Entities' classifications (ACTES nomenclature served by the TdT)."""


@classification.command("refresh")
@click.argument("siren")
@click.option("--flow", default="actes", show_default=True)
@click.option("--wait", "wait_for", default=60.0, show_default=True, metavar="SECONDS",
              help="How long to wait for the fetch to end (0: do not wait).")
@_api_options
def classification_refresh(siren: str, flow: str, wait_for: float, api_url: str,
                           token: str) -> None:
    """Fetch the entity's current classification from its peer and keep it.

    The fetch is a document of flow ``classification``: its step is retried like any
    other, and its journal says what the peer answered.
    """
    doc = _run(_call(api_url, token, "POST", f"/api/v1/entities/{siren}/classification",
                     params={"flow": flow}))
    if wait_for <= 0:
        click.echo(f"{siren}: classification fetch queued as document {doc['id']}")
        return
    doc = _run(_until_ended(api_url, token, doc["id"], wait_for))
    if doc["state"] == eng.COMPLETED:
        click.echo(f"{siren}: classification of {doc['metadata']['version_date']} kept "
                   f"(document {doc['id']})")
    elif doc["state"] in eng.TERMINAL:
        raise click.ClickException(f"{siren}: classification fetch {doc['state']} (document "
                                   f"{doc['id']}): {doc.get('last_error')}")
    else:
        raise click.ClickException(
            f"{siren}: classification fetch still {doc['state']} after {wait_for:g} s "
            f"(document {doc['id']}{': ' + doc['last_error'] if doc.get('last_error') else ''}"
            "); it goes on: `demat status ID` follows it")


async def _until_ended(api_url: str, token: str, document_id: str,
                       seconds: float) -> dict[str, Any]:
    """The document once it has ended, or as it is when ``seconds`` have passed."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while True:
        doc: dict[str, Any] = await _call(api_url, token, "GET",
                                          f"/api/v1/documents/{document_id}")
        if doc["state"] in eng.TERMINAL or loop.time() >= deadline:
            return doc
        await asyncio.sleep(0.2)


@entity.command("list")
@click.option("--limit", type=int, default=100, show_default=True)
@_api_options
def entity_list(limit: int, api_url: str, token: str) -> None:
    """Entities and the connectors each has settings for (through the API)."""
    page = _run(_call(api_url, token, "GET", "/api/v1/entities", params={"limit": str(limit)}))
    for item in page["items"]:
        click.echo(f"{item['siren']}  {item['name']}  {', '.join(sorted(item['connectors']))}")
    click.echo(f"{len(page['items'])} entities", err=True)


@entity.command("show")
@click.argument("siren")
@_api_options
def entity_show(siren: str, api_url: str, token: str) -> None:
    """One entity's settings, secrets masked."""
    _echo(_run(_call(api_url, token, "GET", f"/api/v1/entities/{siren}")))


@entity.command("set")
@click.argument("siren")
@click.option("--name", help="A new name.")
@click.option("--set", "sets", multiple=True, metavar="CONNECTOR.KEY=VALUE",
              help="Change one setting, e.g. --set depot.timeout=30")
@click.option("--unset", "unsets", multiple=True, metavar="CONNECTOR.KEY",
              help="Remove one setting (its default applies again).")
@click.option("--remove", "removes", multiple=True, metavar="CONNECTOR",
              help="Remove a connector's settings altogether.")
@_api_options
def entity_set(siren: str, name: str | None, sets: tuple[str, ...], unsets: tuple[str, ...],
               removes: tuple[str, ...], api_url: str, token: str) -> None:
    """Change an entity's name or settings (through the API: checked when saved)."""
    connectors: dict[str, dict[str, Any] | None] = {key: None for key in removes}
    for connector, setting, value in map(_setting, sets):
        _table(connectors, connector)[setting] = value
    for item in unsets:
        connector, dot, setting = item.partition(".")
        if not dot or not connector or not setting:
            raise click.UsageError(f"--unset {item!r}: expected CONNECTOR.KEY")
        _table(connectors, connector)[setting] = None
    body: dict[str, Any] = {"connectors": connectors} if connectors else {}
    if name:
        body["name"] = name
    if not body:
        raise click.UsageError("nothing to change: give --name, --set, --unset or --remove")
    saved = _run(_call(api_url, token, "PATCH", f"/api/v1/entities/{siren}", json=body))
    click.echo(f"entity {siren} saved ({', '.join(sorted(saved['connectors'])) or 'no'} "
               "connector settings)")


def _table(connectors: dict[str, dict[str, Any] | None], name: str) -> dict[str, Any]:
    """The changes to connector ``name``'s settings (none may go with its removal)."""
    table = connectors.setdefault(name, {})
    if table is None:
        raise click.UsageError(f"connector {name}: --remove and a change of one of its "
                               "settings at once")
    return table


@entity.command("delete")
@click.argument("siren")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@_api_options
def entity_delete(siren: str, yes: bool, api_url: str, token: str) -> None:
    """Remove an entity (refused while any of its documents has not ended)."""
    if not yes:
        click.confirm(f"Remove entity {siren} and its settings?", abort=True)
    _run(_call(api_url, token, "DELETE", f"/api/v1/entities/{siren}"))
    click.echo(f"entity {siren} removed")


@entity.command("check")
@click.argument("siren")
@click.argument("connector")
@_api_options
def entity_check(siren: str, connector: str, api_url: str, token: str) -> None:
    """Ask CONNECTOR's peer a harmless question with the entity's settings; exit 1 if it fails."""
    found = _run(_call(api_url, token, "POST",
                       f"/api/v1/entities/{siren}/connectors/{connector}/check"))
    click.echo(f"{siren} {connector}: {'ok' if found['ok'] else 'FAILED'}: {found['detail']}")
    if not found["ok"]:
        sys.exit(1)


@main.group()
def parking() -> None:
    """Failed documents parked with their last error."""


@parking.command("list")
@click.option("--entity")
@click.option("--flow")
@click.option("--limit", type=int, default=100)
@_api_options
def parking_list(entity: str | None, flow: str | None, limit: int, api_url: str,
                 token: str) -> None:
    params = {k: v for k, v in (("entity", entity), ("flow", flow)) if v}
    page = _run(_call(api_url, token, "GET", "/api/v1/parking",
                      params={**params, "limit": str(limit)}))
    for item in page["items"]:
        click.echo(f"{item['id']}  {item['flow']}  {item['entity']}  {item['step']}  "
                   f"{item['last_error']}")
    click.echo(f"{len(page['items'])} parked", err=True)


@parking.command("replay")
@click.argument("ids", nargs=-1)
@click.option("--entity")
@click.option("--flow")
@click.option("--step")
@click.option("--error", help="Replay those whose last error contains this text.")
@click.option("--all", "all_parked", is_flag=True)
@click.option("--limit", type=int, default=100, show_default=True)
@_api_options
def parking_replay(ids: tuple[str, ...], entity: str | None, flow: str | None,
                   step: str | None, error: str | None, all_parked: bool, limit: int,
                   api_url: str, token: str) -> None:
    """Replay parked documents: by id, by filter, or --all (in batches of --limit)."""
    body = {"ids": list(ids), "entity": entity, "flow": flow, "step": step, "error": error,
            "all": all_parked, "limit": limit}
    _echo(_run(_call(api_url, token, "POST", "/api/v1/parking/replay", json=body)))


@main.group("journal")
def journal_group() -> None:
    """The hash-chained journal."""


@journal_group.command("verify")
@_data_dir_option
@click.pass_context
def journal_verify(ctx: click.Context) -> None:
    """Check the whole chain; name the first altered or missing entry."""
    settings = _settings(ctx)

    async def go() -> journal.Verdict:
        engine = make_engine(settings.db_url)
        try:
            return await stored_journal.verify(engine)
        finally:
            await engine.dispose()

    verdict = _run(go())
    if verdict.ok:
        click.echo(f"journal OK: {verdict.checked} entries, chain intact")
        return
    click.echo(f"journal BROKEN after {verdict.checked} good entries: {verdict.problem}",
               err=True)
    sys.exit(1)


@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@_data_dir_option
@click.pass_context
def db_upgrade(ctx: click.Context) -> None:
    """Apply pending migrations."""
    async def nothing(_conn: Any) -> None:
        return None

    _with_store(_settings(ctx), nothing)
    click.echo("database at the latest schema")
