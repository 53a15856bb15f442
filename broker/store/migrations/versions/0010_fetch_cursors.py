"""Where each entity's fetch from a peer stands (Chorus Pro invoices): its cursor, who runs
it now (a lease, so that two processes never run one entity's fetch at once), when next.

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0010"
down_revision = "0009"

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "fetch_cursors",
        sa.Column("entity", sa.String(9), primary_key=True),
        sa.Column("source", sa.String(32), primary_key=True),
        sa.Column("cursor", JSON, nullable=True),
        sa.Column("next_run_at", sa.Double(), nullable=False),
        sa.Column("lease_owner", sa.String(64), nullable=True),
        sa.Column("lease_until", sa.Double(), nullable=True),
        sa.Column("last_run_at", sa.Double(), nullable=True),
        sa.Column("last_result", JSON, nullable=True),
    )


def downgrade() -> None:
    op.drop_table("fetch_cursors")
