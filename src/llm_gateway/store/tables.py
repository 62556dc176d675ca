"""The store's tables, as SQLAlchemy Core. Migrations in migrations/versions/ create them."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),  # public id, part of the key
    sa.Column("secret_hash", sa.String(64), nullable=False),  # SHA-256 hex of the secret
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("owner", sa.String(200), nullable=False),
    sa.Column("scopes", sa.JSON, nullable=False),
    sa.Column("allowed_models", sa.JSON, nullable=True),
    sa.Column("rpm_limit", sa.Integer, nullable=True),
    sa.Column("tpm_limit", sa.Integer, nullable=True),
    sa.Column("concurrency_limit", sa.Integer, nullable=True),
    sa.Column("model_limits", sa.JSON, nullable=True),  # model -> limits, migration 0002
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
    sa.Index("ix_api_keys_owner", "owner"),
)
