"""Journal entries get their own id and are sealed (seq + hash chain) after the fact,
so appending no longer serialises every transaction on one lock.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003"
down_revision = "0002"

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
BIGID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
COLUMNS = "at, document_id, kind, actor, data, prev_hash, hash"


def upgrade() -> None:
    op.create_table(
        "journal_sealed",
        sa.Column("id", BIGID, primary_key=True, autoincrement=True),
        sa.Column("seq", sa.BigInteger, nullable=True, unique=True),
        sa.Column("at", sa.Double(), nullable=False),
        sa.Column("document_id", sa.String(26), nullable=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("data", JSON, nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=True),
        sa.Column("hash", sa.String(64), nullable=True),
    )
    op.execute(f"INSERT INTO journal_sealed (id, seq, {COLUMNS}) "
               f"SELECT seq, seq, {COLUMNS} FROM journal ORDER BY seq")
    op.drop_index("ix_journal_document", "journal")
    op.drop_table("journal")
    op.rename_table("journal_sealed", "journal")
    op.create_index("ix_journal_document", "journal", ["document_id", "id"])
    if op.get_bind().dialect.name == "postgresql":
        # Copied ids must not be handed out again.
        op.execute("SELECT setval(pg_get_serial_sequence('journal', 'id'), "
                   "COALESCE((SELECT max(id) FROM journal), 0) + 1, false)")


def downgrade() -> None:
    raise NotImplementedError("the journal is append-only; restore from a backup instead")
