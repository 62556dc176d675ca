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

usage_records = sa.Table(
    "usage_records",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("ts", sa.Double, nullable=False),  # arrival, epoch seconds
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
    # ceil(log_1.05(microseconds)): percentiles from bucket counts (usage.latency_bucket)
    sa.Column("latency_bucket", sa.SmallInteger, nullable=False),
    sa.Column("ttft_bucket", sa.SmallInteger, nullable=True),
    sa.Index("ix_usage_ts", "ts"),
    sa.Index("ix_usage_user_ts", "user_id", "ts"),
    sa.Index("ix_usage_key_ts", "key_id", "ts"),
)

responses = sa.Table(
    "responses",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),  # resp_...
    # Whose it is: "key:<key id>", or "user:<name>" for JWTs and auth off (store.responses)
    sa.Column("owner", sa.String(240), nullable=False),
    sa.Column("created_at", sa.Double, nullable=False),  # epoch seconds
    sa.Column("expires_at", sa.Double, nullable=False),  # purged after this
    sa.Column("context", sa.Text, nullable=False),  # JSON: the input items it answered
    sa.Column("body", sa.Text, nullable=False),  # JSON: the response object
    sa.Index("ix_responses_expires_at", "expires_at"),
)

files = sa.Table(
    "files",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),  # file-...
    sa.Column("owner", sa.String(240), nullable=False),  # as responses.owner
    sa.Column("purpose", sa.String(32), nullable=False),  # batch, batch_output
    sa.Column("filename", sa.String(255), nullable=False),
    sa.Column("bytes", sa.BigInteger, nullable=False),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Index("ix_files_owner", "owner", "created_at"),
)

batches = sa.Table(
    "batches",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),  # batch_...
    sa.Column("owner", sa.String(240), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("caller", sa.Text, nullable=False),  # JSON: who runs it (store.batches)
    sa.Column("body", sa.Text, nullable=False),  # JSON: the batch object, counts aside
    # The runner working it off, until lease_until (epoch s): one runner per batch
    # among replicas sharing the database (store.batches.claim).
    sa.Column("runner", sa.String(128), nullable=True),
    sa.Column("lease_until", sa.Double, nullable=True),
    sa.Index("ix_batches_owner", "owner", "created_at"),
    sa.Index("ix_batches_status", "status"),
)

batch_lines = sa.Table(
    "batch_lines",
    metadata,
    sa.Column("batch_id", sa.String(64), primary_key=True),
    sa.Column("line", sa.Integer, primary_key=True),  # 0-based line of the input file
    sa.Column("ok", sa.Boolean, nullable=False),  # output file (2xx) or error file
    sa.Column("body", sa.Text, nullable=False),  # the output line, JSON
)
