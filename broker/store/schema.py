"""Tables. Times are UNIX seconds (float) so SQLite and PostgreSQL compare alike."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

metadata = sa.MetaData()

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TIME: sa.Double[float] = sa.Double()

entities = sa.Table(
    "entities",
    metadata,
    sa.Column("siren", sa.String(9), primary_key=True),
    sa.Column("name", sa.String(255), nullable=False),
    # {connector name: {setting: value}}: endpoints and credentials.
    sa.Column("connectors", JSON, nullable=False),
    sa.Column("created_at", TIME, nullable=False),
)

tokens = sa.Table(
    "tokens",
    metadata,
    sa.Column("id", sa.String(26), primary_key=True),
    sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("role", sa.String(16), nullable=False),  # "entity" | "operator"
    sa.Column("entity", sa.String(9), nullable=True),
    sa.Column("label", sa.String(255), nullable=False, server_default=""),
    sa.Column("created_at", TIME, nullable=False),
    sa.Column("revoked_at", TIME, nullable=True),
)

documents = sa.Table(
    "documents",
    metadata,
    sa.Column("id", sa.String(26), primary_key=True),
    sa.Column("flow", sa.String(32), nullable=False),
    sa.Column("entity", sa.String(9), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("step", sa.String(32), nullable=True),
    # Scheduled run of the current step (1-based).
    sa.Column("run", sa.Integer, nullable=False, server_default="0"),
    sa.Column("next_due_at", TIME, nullable=True),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Column("metadata", JSON, nullable=False),
    # Remote references (transaction ids...) recorded as soon as a peer gives them.
    sa.Column("refs", JSON, nullable=False),
    sa.Column("created_at", TIME, nullable=False),
    sa.Column("updated_at", TIME, nullable=False),
    # A business key unique per entity and flow (an act's number); released
    # when the document is rejected or cancelled so the number can be reused.
    sa.Column("unique_key", sa.String(64), nullable=True),
    # The client's Idempotency-Key: a repeated submission returns the first document.
    sa.Column("submission_key", sa.String(128), nullable=True),
    # When the document entered its current step: how long it has been there (stuck?).
    sa.Column("step_since", TIME, nullable=True),
    sa.Index("ix_documents_entity_flow_state", "entity", "flow", "state", "id"),
    sa.Index("ux_documents_unique_key", "entity", "flow", "unique_key", unique=True),
    sa.Index("ux_documents_submission_key", "entity", "submission_key", unique=True),
    sa.Index("ix_documents_state", "state", "id"),
    sa.Index("ix_documents_state_since", "state", "step_since"),
    sa.Index("ix_documents_state_updated", "state", "updated_at"),
)

files = sa.Table(
    "files",
    metadata,
    sa.Column("id", sa.String(26), primary_key=True),
    sa.Column("document_id", sa.String(26), sa.ForeignKey("documents.id"), nullable=False),
    sa.Column("role", sa.String(32), nullable=False),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("content_type", sa.String(127), nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    # The step that produced it; None for uploaded files.
    sa.Column("step", sa.String(32), nullable=True),
    sa.Column("created_at", TIME, nullable=False),
    sa.Index("ix_files_document", "document_id"),
)

# One row per scheduled execution of a step; the job table is also the outbox
# the relay publishes from.
jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", sa.String(26), primary_key=True),
    sa.Column("document_id", sa.String(26), sa.ForeignKey("documents.id"), nullable=False),
    sa.Column("connector", sa.String(32), nullable=False),
    sa.Column("step", sa.String(32), nullable=False),
    sa.Column("kind", sa.String(8), nullable=False),  # run | retry | poll | replay
    sa.Column("run", sa.Integer, nullable=False),
    sa.Column("polls", sa.Integer, nullable=False, server_default="0"),
    # Times a worker disappeared (killed, hung) while running this job's step.
    sa.Column("crashes", sa.Integer, nullable=False, server_default="0"),
    sa.Column("poll_deadline", TIME, nullable=True),
    # scheduled -> published -> running -> done | parked | cancelled
    sa.Column("state", sa.String(12), nullable=False),
    sa.Column("due_at", TIME, nullable=False),
    sa.Column("published_at", TIME, nullable=True),
    sa.Column("worker_id", sa.String(64), nullable=True),
    sa.Column("claim_token", sa.String(26), nullable=True),
    sa.Column("lease_until", TIME, nullable=True),
    sa.Column("finished_at", TIME, nullable=True),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Column("created_at", TIME, nullable=False),
    sa.Index("ix_jobs_state_due", "state", "due_at"),
    sa.Index("ix_jobs_document", "document_id"),
    sa.Index("ix_jobs_connector_finished", "connector", "state", "finished_at"),
    sa.Index("ix_jobs_finished", "finished_at"),
)

# State events: written with the change, published by the relay on the events exchange,
# then kept a while (bounded) so a page opened late can catch up.
events = sa.Table(
    "events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("routing_key", sa.String(128), nullable=False),
    sa.Column("payload", JSON, nullable=False),
    sa.Column("created_at", TIME, nullable=False),
    sa.Column("entity", sa.String(9), nullable=True),
    # None until the relay has published it.
    sa.Column("published_at", TIME, nullable=True),
    sa.Index("ix_events_published", "published_at", "id"),
)

BIGID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

# Append-only, hash-chained audit log. Entries are written with the change they
# record; the relay then seals them: a gap-free ``seq`` and the hash chain.
journal = sa.Table(
    "journal",
    metadata,
    sa.Column("id", BIGID, primary_key=True, autoincrement=True),
    sa.Column("seq", sa.BigInteger, nullable=True, unique=True),
    sa.Column("at", TIME, nullable=False),
    sa.Column("document_id", sa.String(26), nullable=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("actor", sa.String(64), nullable=False),
    sa.Column("data", JSON, nullable=False),
    sa.Column("prev_hash", sa.String(64), nullable=True),
    sa.Column("hash", sa.String(64), nullable=True),
    sa.Index("ix_journal_document", "document_id", "id"),
)

workers = sa.Table(
    "workers",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("connectors", JSON, nullable=False),
    sa.Column("started_at", TIME, nullable=False),
    sa.Column("seen_at", TIME, nullable=False),
)

# Dashboard sign-ins: the cookie's value is never stored, only its SHA-256 (``id``).
sessions = sa.Table(
    "sessions",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("token_id", sa.String(26), nullable=False),
    # Every form of the session carries it; a POST without it is refused.
    sa.Column("csrf", sa.String(64), nullable=False),
    sa.Column("created_at", TIME, nullable=False),
    sa.Column("seen_at", TIME, nullable=False),
    sa.Column("expires_at", TIME, nullable=False),
    # Set at sign-out: the cookie is worthless from then on, wherever it went.
    sa.Column("ended_at", TIME, nullable=True),
)

# The domain's keys a person looks a document up by (act number, IDActe, NomFic...),
# copied from its metadata when they are set: one indexed lookup on both databases.
document_keys = sa.Table(
    "document_keys",
    metadata,
    sa.Column("document_id", sa.String(26), primary_key=True),
    sa.Column("name", sa.String(32), primary_key=True),
    sa.Column("value", sa.String(255), nullable=False),
    sa.Index("ix_document_keys_value", "value"),
)

# Documents per entity, flow and state, kept by the writes that move them (the dashboard's
# counts without scanning the documents).
document_counts = sa.Table(
    "document_counts",
    metadata,
    sa.Column("entity", sa.String(9), primary_key=True),
    sa.Column("flow", sa.String(32), primary_key=True),
    sa.Column("state", sa.String(16), primary_key=True),
    sa.Column("n", sa.BigInteger, nullable=False),
)

# Documents that ended (completed, rejected, failed, cancelled) per hour (UNIX hours), per
# entity and for all entities (entity "*").
ended_hours = sa.Table(
    "ended_hours",
    metadata,
    sa.Column("hour", sa.Integer, primary_key=True),
    sa.Column("entity", sa.String(9), primary_key=True),
    sa.Column("flow", sa.String(32), primary_key=True),
    sa.Column("state", sa.String(16), primary_key=True),
    sa.Column("n", sa.BigInteger, nullable=False),
)

# Where each entity's fetch from a peer stands: the peer's cursor, the lease of the process
# running it now (never two at once for one entity), and when it runs next.
fetch_cursors = sa.Table(
    "fetch_cursors",
    metadata,
    sa.Column("entity", sa.String(9), primary_key=True),
    sa.Column("source", sa.String(32), primary_key=True),
    sa.Column("cursor", JSON, nullable=True),
    sa.Column("next_run_at", TIME, nullable=False),
    sa.Column("lease_owner", sa.String(64), nullable=True),
    sa.Column("lease_until", TIME, nullable=True),
    sa.Column("last_run_at", TIME, nullable=True),
    sa.Column("last_result", JSON, nullable=True),
)
