"""Classifications become documents of flow ``classification`` (fetched by a retried,
journaled step); each kept classification moves into a completed document.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from broker.ids import new_id

revision = "0007"
down_revision = "0006"

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
_kept = sa.table("classifications", sa.column("entity"), sa.column("flow"),
                 sa.column("version_date"), sa.column("data", JSON), sa.column("fetched_at"))
_documents = sa.table("documents", *(sa.column(c) for c in (
    "id", "flow", "entity", "state", "step", "run", "created_at", "updated_at")),
    sa.column("metadata", JSON), sa.column("refs", JSON))
_journal = sa.table("journal", sa.column("at"), sa.column("document_id"), sa.column("kind"),
                    sa.column("actor"), sa.column("data", JSON))


def upgrade() -> None:
    bind = op.get_bind()
    for row in bind.execute(sa.select(_kept)).all():
        doc_id = new_id()
        bind.execute(_documents.insert().values(
            id=doc_id, flow="classification", entity=row.entity, state="completed",
            step="fetch", run=1, created_at=row.fetched_at, updated_at=row.fetched_at,
            metadata={"of": row.flow, "version_date": row.version_date,
                      "classification": row.data}, refs={}))
        bind.execute(_journal.insert().values(
            at=row.fetched_at, document_id=doc_id, kind="intake", actor="migration",
            data={"flow": "classification", "plan": ["fetch"], "migrated": True}))
    op.drop_table("classifications")


def downgrade() -> None:
    op.create_table(
        "classifications",
        sa.Column("entity", sa.String(9), primary_key=True),
        sa.Column("flow", sa.String(32), primary_key=True),
        sa.Column("version_date", sa.String(10), nullable=False),
        sa.Column("data", JSON, nullable=False),
        sa.Column("fetched_at", sa.Double(), nullable=False),
    )
