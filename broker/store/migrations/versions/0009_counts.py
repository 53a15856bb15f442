"""Counts kept as documents change (per entity, flow and state; ended per hour), filled
from the documents already stored.

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"

TERMINAL = ("completed", "rejected", "failed", "cancelled")


def upgrade() -> None:
    op.create_table(
        "document_counts",
        sa.Column("entity", sa.String(9), primary_key=True),
        sa.Column("flow", sa.String(32), primary_key=True),
        sa.Column("state", sa.String(16), primary_key=True),
        sa.Column("n", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "ended_hours",
        sa.Column("hour", sa.Integer(), primary_key=True),
        sa.Column("entity", sa.String(9), primary_key=True),
        sa.Column("flow", sa.String(32), primary_key=True),
        sa.Column("state", sa.String(16), primary_key=True),
        sa.Column("n", sa.BigInteger(), nullable=False),
    )
    op.execute("INSERT INTO document_counts (entity, flow, state, n) "
               "SELECT entity, flow, state, count(*) FROM documents GROUP BY entity, flow, state")
    # A document's last change is when it ended (earlier ends of replayed ones are not kept).
    hour = "CAST(floor(updated_at / 3600) AS INTEGER)"
    if op.get_bind().dialect.name == "sqlite":
        hour = "CAST(updated_at / 3600 AS INTEGER)"  # times are positive: truncating floors
    terminal = ", ".join(f"'{s}'" for s in TERMINAL)
    op.execute(f"INSERT INTO ended_hours (hour, entity, flow, state, n) "
               f"SELECT {hour}, entity, flow, state, count(*) FROM documents "
               f"WHERE state IN ({terminal}) GROUP BY {hour}, entity, flow, state")
    # The same for every entity at once: the rows operators read.
    op.execute(f"INSERT INTO ended_hours (hour, entity, flow, state, n) "
               f"SELECT {hour}, '*', flow, state, count(*) FROM documents "
               f"WHERE state IN ({terminal}) GROUP BY {hour}, flow, state")


def downgrade() -> None:
    op.drop_table("ended_hours")
    op.drop_table("document_counts")
