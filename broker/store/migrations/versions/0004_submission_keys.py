"""Idempotent submissions: a client's Idempotency-Key, unique per entity.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    with op.batch_alter_table("documents") as batch:
        batch.add_column(sa.Column("submission_key", sa.String(128), nullable=True))
    op.create_index("ux_documents_submission_key", "documents", ["entity", "submission_key"],
                    unique=True)


def downgrade() -> None:
    op.drop_index("ux_documents_submission_key", "documents")
    with op.batch_alter_table("documents") as batch:
        batch.drop_column("submission_key")
