"""Batch leases: which runner works a batch off, and until when.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("batches", sa.Column("runner", sa.String(128), nullable=True))
    op.add_column("batches", sa.Column("lease_until", sa.Double, nullable=True))


def downgrade() -> None:
    op.drop_column("batches", "lease_until")
    op.drop_column("batches", "runner")
