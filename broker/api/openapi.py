"""OpenAPI 3.1 description of the API, built from the pydantic models."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from broker.api import models as m
from broker.api.query import rule
from broker.flows.base import Flow

_MODELS: list[type[BaseModel]] = [m.ErrorOut, m.DocumentOut, m.DocumentPage, m.JournalEntryOut,
                                  m.ReplayIn, m.ReplayOut, m.SubmitForm, m.EntityIn,
                                  m.EntityPatch, m.EntityOut, m.EntityPage, m.CheckOut]


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _json(model: type[BaseModel] | dict[str, Any], description: str = "OK") -> dict[str, Any]:
    schema = _ref(model) if isinstance(model, type) else model
    return {"description": description, "content": {"application/json": {"schema": schema}}}


# Every operation may answer these; an operation's own entries say more where they can.
_ERRORS = {str(code): _json(m.ErrorOut, text) for code, text in (
    (400, "malformed request: a body that is not JSON or not multipart, a bad header"),
    (401, "missing or unknown token"), (403, "not allowed for this token"),
    (404, "not found (or not visible to this token)"),
    (422, "invalid input, each problem named with its field"))}


def _body(model: type[BaseModel]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": _ref(model)}}}


def _flow(flow: Flow, schemas: dict[str, Any]) -> dict[str, Any]:
    """A flow's parts and metadata; its metadata model joins the components' schemas."""
    model = flow.metadata_model
    found = model.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(found.pop("$defs", {}))
    schemas[model.__name__] = found
    return {"description": flow.description,
            "files": {role: {"min": r.min, "max": r.max, "description": r.description}
                      for role, r in flow.files.items()},
            "metadata": _ref(model)}


def _param(name: str, where: str = "query", required: bool = False,
           schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": name, "in": where, "required": required or where == "path",
            "schema": schema or rule(name).schema}


def build(flows: Mapping[str, Flow]) -> dict[str, Any]:
    """The document for a build serving ``flows`` (their names are the enums it lists)."""
    _, defs = models_json_schema([(model, "validation") for model in _MODELS],
                                 ref_template="#/components/schemas/{model}")
    submittable = sorted(n for n, f in flows.items() if not f.incoming_only)
    defs["$defs"]["SubmitForm"]["properties"]["flow"]["enum"] = submittable
    classified = _param("flow", schema={"type": "string", "default": "actes", "enum": sorted(
        n for n, f in flows.items() if f.classification_by)})
    doc_id = _param("id", "path")
    siren = _param("siren", "path")
    schemas = dict(defs.get("$defs", {}))
    follow_ups = {(flow.name, name): f for flow in flows.values()
                  for name, f in flow.follow_ups.items()}
    for f in follow_ups.values():
        found = f.model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(found.pop("$defs", {}))
        schemas[f.model.__name__] = found
    return {
        "openapi": "3.1.0",
        "info": {"title": "demat-broker", "version": "1"},
        # What each flow takes: its file parts (by role) and its metadata's schema.
        "x-flows": {name: _flow(flows[name], schemas) for name in submittable},
        # What a waiting document's step takes from the API, per flow (an invoice's statuses).
        "x-requests": {f"{flow}/{name}": {"step": f.step, "description": f.description,
                                           "body": _ref(f.model)}
                       for (flow, name), f in sorted(follow_ups.items())},
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": {
            "/api/v1/documents": {
                "post": {
                    "summary": "Submit a document (multipart: flow, entity, metadata, files)",
                    "parameters": [{"name": "Idempotency-Key", "in": "header", "required": False,
                                    "schema": {"type": "string", "minLength": 1,
                                               "maxLength": 128},
                                    "description": "resending with the same key returns the "
                                                   "first document (200) instead of a new one"}],
                    "requestBody": {"required": True, "content": {
                        "multipart/form-data": {"schema": _ref(m.SubmitForm)}}},
                    "responses": {"201": _json(m.DocumentOut, "accepted"),
                                  "200": _json(m.DocumentOut, "already accepted (same key)"),
                                  **_ERRORS,
                                  "413": _json(m.ErrorOut, "upload too large"),
                                  "415": _json(m.ErrorOut, "not multipart/form-data"),
                                  "422": _json(m.ErrorOut, "invalid fields, named")},
                },
                "get": {
                    "summary": "List documents, newest first, with cursor paging",
                    "parameters": [_param(p) for p in ("entity", "flow", "state", "nom_fic",
                                                       "limit", "cursor")],
                    "responses": {"200": _json(m.DocumentPage), **_ERRORS},
                },
            },
            "/api/v1/documents/{id}": {"get": {
                "summary": "One document: state, step, attempt, next due time, last error, "
                           "files, metadata",
                "parameters": [doc_id], "responses": {"200": _json(m.DocumentOut), **_ERRORS}}},
            "/api/v1/documents/{id}/files/{file_id}": {"get": {
                "summary": "Download a file", "parameters": [doc_id, _param("file_id", "path")],
                "responses": {"200": {"description": "the file's bytes"}, **_ERRORS}}},
            "/api/v1/documents/{id}/journal": {"get": {
                "summary": "The document's journal entries", "parameters": [doc_id],
                "responses": {"200": _json({"type": "array", "items": _ref(m.JournalEntryOut)}),
                              **_ERRORS}}},
            "/api/v1/documents/{id}/retry": {"post": {
                "summary": "Run the current step again now", "parameters": [doc_id],
                "responses": {"200": _json(m.DocumentOut), **_ERRORS,
                              "409": _json(m.ErrorOut, "nothing to retry in this state")}}},
            "/api/v1/documents/{id}/cancel": {"post": {
                "summary": "Cancel a document that has not ended", "parameters": [doc_id],
                "responses": {"200": _json(m.DocumentOut), **_ERRORS,
                              "409": _json(m.ErrorOut, "already ended")}}},
            "/api/v1/documents/{id}/actions/{action}": {"post": {
                "summary": "A flow's follow-up on a completed document (ACTES: annuler)",
                "parameters": [doc_id, _param("action", "path")],
                "responses": {"200": _json(m.DocumentOut), **_ERRORS,
                              "409": _json(m.ErrorOut, "not possible in this state")}}},
            "/api/v1/documents/{id}/requests/{name}": {"post": {
                "summary": "A request for a step of the document's plan (facture: statuts, "
                           "the invoice's next statuses), checked whole before anything is "
                           "sent, kept until that step does it (at once if the document "
                           "waits in it)",
                "parameters": [doc_id, _param("name", "path", schema={
                    "type": "string", "enum": sorted({n for _, n in follow_ups})})],
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "oneOf": [_ref(f.model) for f in follow_ups.values()]}}}},
                "responses": {"200": _json(m.DocumentOut), **_ERRORS,
                              "409": _json(m.ErrorOut, "the document has passed the step "
                                                       "that takes it, or has ended"),
                              "422": _json(m.ErrorOut, "refused (a transition not allowed "
                                                       "from the current status names the "
                                                       "allowed ones)")}}},
            "/api/v1/entities": {
                "get": {"summary": "Entities (operators only), by SIREN, with cursor paging",
                        "parameters": [_param("limit"), _param("cursor")],
                        "responses": {"200": _json(m.EntityPage), **_ERRORS}},
                "post": {"summary": "Add an entity; its connector settings are checked first",
                         "requestBody": _body(m.EntityIn),
                         "responses": {"201": _json(m.EntityOut, "created"), **_ERRORS,
                                       "409": _json(m.ErrorOut, "exists already"),
                                       "422": _json(m.ErrorOut, "invalid settings, each "
                                                    "named connectors.<key>.<field>")}}},
            "/api/v1/entities/{siren}": {
                "get": {"summary": "One entity, secrets masked", "parameters": [siren],
                        "responses": {"200": _json(m.EntityOut), **_ERRORS}},
                "patch": {"summary": "Change its name or settings (merged; secrets write-only)",
                          "parameters": [siren], "requestBody": _body(m.EntityPatch),
                          "responses": {"200": _json(m.EntityOut), **_ERRORS,
                                        "422": _json(m.ErrorOut, "invalid settings, named")}},
                "delete": {"summary": "Remove it and revoke its tokens (refused while it has "
                                      "documents not ended)", "parameters": [siren],
                           "responses": {"204": {"description": "removed"}, **_ERRORS,
                                         "409": _json(m.ErrorOut, "documents not ended")}}},
            "/api/v1/entities/{siren}/connectors/{name}/check": {"post": {
                "summary": "Ask the connector's peer a harmless question with these settings "
                           "(an OPTIONS, a listing, a ping)",
                "parameters": [siren, _param("name", "path")],
                "responses": {"200": _json(m.CheckOut), **_ERRORS,
                              "422": _json(m.ErrorOut, "no settings for it")}}},
            "/api/v1/entities/{siren}/classification": {
                "get": {"summary": "The entity's current classification (ACTES: from 7-2)",
                        "parameters": [siren, classified],
                        "responses": {"200": {"description": "version date and codes"},
                                      **_ERRORS}},
                "post": {"summary": "Fetch it again from the peer (the TdT): a document of flow "
                                    "classification, whose step is retried and journaled",
                         "parameters": [siren, classified],
                         "responses": {"202": _json(m.DocumentOut, "the classification "
                                                    "document, queued"), **_ERRORS}}},
            "/api/v1/events": {"get": {
                "summary": "Recent state events after an id, oldest first (a bounded history, "
                           "for a page opened late to catch up; live ones go to the events "
                           "exchange)",
                "parameters": [_param(p) for p in ("after", "limit", "entity", "flow")],
                "responses": {"200": {"description": "items and last_id"}, **_ERRORS}}},
            "/api/v1/parking": {"get": {
                "summary": "Failed documents parked with their last error",
                "parameters": [_param(p) for p in ("entity", "flow", "limit", "cursor")],
                "responses": {"200": _json(m.DocumentPage), **_ERRORS}}},
            "/api/v1/parking/replay": {"post": {
                "summary": "Replay parked documents: one, a filter, or all (bounded batch)",
                "requestBody": {"required": True, "content": {
                    "application/json": {"schema": _ref(m.ReplayIn)}}},
                "responses": {"200": _json(m.ReplayOut), **_ERRORS}}},
            "/healthz": {"get": {"summary": "Process is alive", "security": [],
                                 "responses": {"200": {"description": "alive"}}}},
            "/readyz": {"get": {"summary": "Store and transport answer", "security": [],
                                "responses": {"200": {"description": "ready"},
                                              "503": {"description": "not ready"}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "security": [],
                                 "responses": {"200": {"description": "text format"}}}},
        },
    }
