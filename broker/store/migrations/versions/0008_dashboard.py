"""The operator dashboard: sign-in sessions, when a document entered its step (stuck
documents), and the indexes its overview reads by.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# The keys indexed when this migration was written (later changes to the list are later
# migrations' business).
KEYS = ("id_acte", "numero", "nom_fic", "numero_facture")
BATCH = 1000

revision = "0008"
down_revision = "0007"

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "sessions",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("token_id", sa.String(26), nullable=False),
        sa.Column("csrf", sa.String(64), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("seen_at", sa.Double(), nullable=False),
        sa.Column("expires_at", sa.Double(), nullable=False),
        sa.Column("ended_at", sa.Double(), nullable=True),
    )
    with op.batch_alter_table("documents") as batch:
        batch.add_column(sa.Column("step_since", sa.Double(), nullable=True))
    # Documents already in a step are taken as having entered it at their last change.
    op.execute("UPDATE documents SET step_since = updated_at")
    op.create_index("ix_documents_state_since", "documents", ["state", "step_since"])
    op.create_index("ix_documents_state_updated", "documents", ["state", "updated_at"])
    op.create_index("ix_jobs_connector_finished", "jobs", ["connector", "state", "finished_at"])
    op.create_index("ix_jobs_finished", "jobs", ["finished_at"])
    op.create_table(
        "document_keys",
        sa.Column("document_id", sa.String(26), primary_key=True),
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("value", sa.String(255), nullable=False),
    )
    op.create_index("ix_document_keys_value", "document_keys", ["value"])
    _copy_keys()


def _copy_keys() -> None:
    """Index the keys of the documents already stored, as the store does for new ones."""
    bind = op.get_bind()
    docs = sa.table("documents", sa.column("id"), sa.column("metadata", JSON))
    keys = sa.table("document_keys", sa.column("document_id"), sa.column("name"),
                    sa.column("value"))
    after = ""
    while True:  # in id order, a batch at a time: memory stays flat on a large store
        batch = bind.execute(sa.select(docs.c.id, docs.c.metadata).where(docs.c.id > after)
                             .order_by(docs.c.id).limit(BATCH)).all()
        if not batch:
            return
        rows = [{"document_id": row.id, "name": name, "value": str(value)[:255]}
                for row in batch for name in KEYS
                if isinstance(value := (row.metadata or {}).get(name), str | int)
                and not isinstance(value, bool) and str(value)]
        if rows:
            bind.execute(keys.insert(), rows)
        after = batch[-1].id


def downgrade() -> None:
    op.drop_table("document_keys")
    op.drop_index("ix_jobs_finished", "jobs")
    op.drop_index("ix_jobs_connector_finished", "jobs")
    op.drop_index("ix_documents_state_updated", "documents")
    op.drop_index("ix_documents_state_since", "documents")
    with op.batch_alter_table("documents") as batch:
        batch.drop_column("step_since")
    op.drop_table("sessions")
