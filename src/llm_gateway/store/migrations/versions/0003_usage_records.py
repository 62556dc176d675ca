"""Usage records: one row per request (who, which model, status, tokens, latencies).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "usage_records",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
        sa.Column("ts", sa.Double, nullable=False),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("key_id", sa.String(32), nullable=True),
        sa.Column("user_id", sa.String(200), nullable=True),
        sa.Column("model", sa.String(200), nullable=True),
        sa.Column("backend", sa.String(32), nullable=True),
        sa.Column("method", sa.String(10), nullable=False),
        sa.Column("endpoint", sa.String(200), nullable=False),
        sa.Column("status", sa.SmallInteger, nullable=False),
        sa.Column("prompt_tokens", sa.Integer, nullable=False),
        sa.Column("completion_tokens", sa.Integer, nullable=False),
        sa.Column("ttft_ms", sa.Double, nullable=True),
        sa.Column("latency_ms", sa.Double, nullable=False),
        sa.Column("tokens_per_s", sa.Double, nullable=True),
        sa.Column("error_type", sa.String(64), nullable=True),
        sa.Column("client", sa.String(64), nullable=True),
        sa.Column("latency_bucket", sa.SmallInteger, nullable=False),
        sa.Column("ttft_bucket", sa.SmallInteger, nullable=True),
    )
    op.create_index("ix_usage_ts", "usage_records", ["ts"])
    op.create_index("ix_usage_user_ts", "usage_records", ["user_id", "ts"])
    op.create_index("ix_usage_key_ts", "usage_records", ["key_id", "ts"])


def downgrade() -> None:
    op.drop_table("usage_records")
