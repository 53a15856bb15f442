"""State events are kept once published (a bounded recent history), with their entity.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"


def upgrade() -> None:
    with op.batch_alter_table("events") as batch:
        batch.add_column(sa.Column("entity", sa.String(9), nullable=True))
        batch.add_column(sa.Column("published_at", sa.Double(), nullable=True))
    op.create_index("ix_events_published", "events", ["published_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_events_published", "events")
    with op.batch_alter_table("events") as batch:
        batch.drop_column("published_at")
        batch.drop_column("entity")
