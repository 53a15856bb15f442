"""Per-entity unique business keys (an act's number) and entity classifications.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("documents") as batch:
        batch.add_column(sa.Column("unique_key", sa.String(64), nullable=True))
    op.create_index("ux_documents_unique_key", "documents", ["entity", "flow", "unique_key"],
                    unique=True)
    op.create_table(
        "classifications",
        sa.Column("entity", sa.String(9), primary_key=True),
        sa.Column("flow", sa.String(32), primary_key=True),
        sa.Column("version_date", sa.String(10), nullable=False),
        sa.Column("data", JSON, nullable=False),
        sa.Column("fetched_at", sa.Double(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("classifications")
    op.drop_index("ux_documents_unique_key", "documents")
    with op.batch_alter_table("documents") as batch:
        batch.drop_column("unique_key")
