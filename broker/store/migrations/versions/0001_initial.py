"""Initial schema: entities, tokens, documents, files, jobs, events, journal, workers.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TIME: sa.Double[float] = sa.Double()


def upgrade() -> None:
    op.create_table(
        "entities",
        sa.Column("siren", sa.String(9), primary_key=True),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("connectors", JSON, nullable=False),
        sa.Column("created_at", TIME, nullable=False),
    )
    op.create_table(
        "tokens",
        sa.Column("id", sa.String(26), primary_key=True),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("entity", sa.String(9), nullable=True),
        sa.Column("label", sa.String(255), nullable=False, server_default=""),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("revoked_at", TIME, nullable=True),
    )
    op.create_table(
        "documents",
        sa.Column("id", sa.String(26), primary_key=True),
        sa.Column("flow", sa.String(32), nullable=False),
        sa.Column("entity", sa.String(9), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("step", sa.String(32), nullable=True),
        sa.Column("run", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_due_at", TIME, nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("metadata", JSON, nullable=False),
        sa.Column("refs", JSON, nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("updated_at", TIME, nullable=False),
    )
    op.create_index("ix_documents_entity_flow_state", "documents",
                    ["entity", "flow", "state", "id"])
    op.create_index("ix_documents_state", "documents", ["state", "id"])
    op.create_table(
        "files",
        sa.Column("id", sa.String(26), primary_key=True),
        sa.Column("document_id", sa.String(26), sa.ForeignKey("documents.id"), nullable=False),
        sa.Column("role", sa.String(32), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("content_type", sa.String(127), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("step", sa.String(32), nullable=True),
        sa.Column("created_at", TIME, nullable=False),
    )
    op.create_index("ix_files_document", "files", ["document_id"])
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(26), primary_key=True),
        sa.Column("document_id", sa.String(26), sa.ForeignKey("documents.id"), nullable=False),
        sa.Column("connector", sa.String(32), nullable=False),
        sa.Column("step", sa.String(32), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("run", sa.Integer, nullable=False),
        sa.Column("polls", sa.Integer, nullable=False, server_default="0"),
        sa.Column("poll_deadline", TIME, nullable=True),
        sa.Column("state", sa.String(12), nullable=False),
        sa.Column("due_at", TIME, nullable=False),
        sa.Column("published_at", TIME, nullable=True),
        sa.Column("worker_id", sa.String(64), nullable=True),
        sa.Column("claim_token", sa.String(26), nullable=True),
        sa.Column("lease_until", TIME, nullable=True),
        sa.Column("finished_at", TIME, nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("created_at", TIME, nullable=False),
    )
    op.create_index("ix_jobs_state_due", "jobs", ["state", "due_at"])
    op.create_index("ix_jobs_document", "jobs", ["document_id"])
    op.create_table(
        "events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("routing_key", sa.String(128), nullable=False),
        sa.Column("payload", JSON, nullable=False),
        sa.Column("created_at", TIME, nullable=False),
    )
    op.create_table(
        "journal",
        sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("at", TIME, nullable=False),
        sa.Column("document_id", sa.String(26), nullable=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("data", JSON, nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    op.create_index("ix_journal_document", "journal", ["document_id", "seq"])
    op.create_table(
        "workers",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("connectors", JSON, nullable=False),
        sa.Column("started_at", TIME, nullable=False),
        sa.Column("seen_at", TIME, nullable=False),
    )


def downgrade() -> None:
    for table in ("workers", "journal", "events", "jobs", "files", "documents", "tokens",
                  "entities"):
        op.drop_table(table)
