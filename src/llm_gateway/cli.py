"""The command line: `llm-gateway serve` (also `python -m llm_gateway serve`).

Every Settings field becomes a `serve` option, so `--help` documents each
setting with its environment variable and default; options given on the
command line override the environment.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import click
from pydantic import ValidationError

from llm_gateway.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from llm_gateway.auth.keys import KeyStore
    from llm_gateway.limits.base import Limits


def _env_name(name: str) -> str:
    field = Settings.model_fields[name]
    alias = field.validation_alias
    choices = getattr(alias, "choices", None)
    if choices:
        return str(choices[0])
    return f"GATEWAY_{name.upper()}"


_METAVARS = {
    "<class 'int'>": "INT",
    "int | None": "INT",
    "<class 'pathlib.Path'>": "PATH",
    "pathlib.Path | None": "PATH",
    "str | None": "TEXT",
}


def _settings_options(func: Any) -> Any:
    for name, field in reversed(list(Settings.model_fields.items())):
        default = field.get_default(call_default_factory=False)
        shown = "" if default is None or callable(default) else f" [default: {default}]"
        if field.default_factory is not None:
            shown = " [default: ~/.local/share/llm-gateway]"
        help_text = f"{field.description}{shown} [env: {_env_name(name)}]"
        flag = f"--{name.replace('_', '-')}"
        if field.annotation is bool:
            negative = f"--no-{name.replace('_', '-')}"
            option = click.option(f"{flag}/{negative}", name, default=None, help=help_text)
        else:
            metavar = _METAVARS.get(str(field.annotation), "TEXT")
            option = click.option(flag, name, default=None, metavar=metavar, help=help_text)
        func = option(func)
    return func


@click.group()
@click.version_option(package_name="llm-gateway")
def main() -> None:
    """llm-gateway: LLM inference in process, behind OpenAI- and Ollama-compatible APIs."""


@main.command()
@_settings_options
def serve(**options: Any) -> None:
    """Start the gateway (serves the built-in model when nothing else is configured)."""
    overrides = {k: v for k, v in options.items() if v is not None}
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        raise click.UsageError(str(exc)) from exc
    from llm_gateway.logs import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    from llm_gateway.server import run

    sys.exit(run(settings))


# ---- keys and tokens ---------------------------------------------------------------
def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        raise click.UsageError(str(exc)) from exc


def _with_engine(action: Callable[[AsyncEngine], Awaitable[Any]]) -> Any:
    """Run an action on the configured store (DATABASE_URL or the data directory)."""
    from llm_gateway.store.database import create_engine, migrate, resolve_url

    settings = _settings()

    async def run() -> Any:
        engine = create_engine(resolve_url(settings.database_url, settings.data_dir))
        try:
            await migrate(engine)
            return await action(engine)
        finally:
            await engine.dispose()

    logging.getLogger("alembic").setLevel(logging.WARNING)
    return asyncio.run(run())


def _with_store(action: Callable[[KeyStore], Awaitable[Any]]) -> Any:
    """Run an action on the configured key store."""
    from llm_gateway.auth.keys import KeyStore

    return _with_engine(lambda engine: action(KeyStore(engine)))


@main.group()
def keys() -> None:
    """Manage API keys in the store the gateway uses (DATABASE_URL or GATEWAY_DATA_DIR)."""


@keys.command("create")
@click.option("--name", required=True, help="A label for the key.")
@click.option("--owner", required=True, help="The user id the key belongs to.")
@click.option("--admin", is_flag=True, help="Give the key the admin scope.")
@click.option("--model", "models", multiple=True, help="Allow only this model (repeatable).")
@click.option("--rpm", type=int, help="Requests per minute.")
@click.option("--tpm", type=int, help="Tokens per minute.")
@click.option("--concurrency", type=int, help="Concurrent requests.")
@click.option(
    "--model-limit",
    "model_limits",
    multiple=True,
    metavar="MODEL:rpm=N,tpm=N,concurrency=N",
    help="Limits for one model, counted on their own (repeatable), e.g. smollm2:rpm=10.",
)
@click.option("--expires-in-days", type=float, help="Expire after this many days.")
def keys_create(
    name: str,
    owner: str,
    admin: bool,
    models: tuple[str, ...],
    rpm: int | None,
    tpm: int | None,
    concurrency: int | None,
    model_limits: tuple[str, ...],
    expires_in_days: float | None,
) -> None:
    """Create a key and print it (its secret is shown only this once)."""
    from llm_gateway.auth.keys import NewKey

    expires = None
    if expires_in_days is not None:
        expires = datetime.now(UTC) + timedelta(days=expires_in_days)
    spec = NewKey(
        name=name,
        owner=owner,
        scopes=("admin",) if admin else ("user",),
        allowed_models=models or None,
        rpm_limit=rpm,
        tpm_limit=tpm,
        concurrency_limit=concurrency,
        model_limits=dict(_parse_model_limit(m) for m in model_limits) or None,
        expires_at=expires,
    )
    key, full = _with_store(lambda store: store.create(spec))
    click.echo(full)
    click.echo(f"id {key.id}, owner {key.owner}, scopes {' '.join(key.scopes)}", err=True)


def _parse_model_limit(text: str) -> tuple[str, Limits]:
    """'smollm2:rpm=10,tpm=5000,concurrency=2' -> ('smollm2', Limits(10, 5000, 2))."""
    from llm_gateway.limits.base import Limits

    model, sep, spec = text.rpartition(":")
    values: dict[str, int] = {}
    try:
        for part in spec.split(","):
            name, _, number = part.partition("=")
            if name.strip() not in ("rpm", "tpm", "concurrency") or name.strip() in values:
                raise ValueError(part)
            values[name.strip()] = int(number)
    except ValueError:
        raise click.BadParameter(
            f"'{text}': expected MODEL:rpm=N,tpm=N,concurrency=N", param_hint="--model-limit"
        ) from None
    if not sep or not model or any(v < 0 for v in values.values()):
        raise click.BadParameter(
            f"'{text}': expected MODEL:rpm=N,tpm=N,concurrency=N", param_hint="--model-limit"
        )
    return model, Limits(values.get("rpm"), values.get("tpm"), values.get("concurrency"))


@keys.command("list")
@click.option("--owner", help="Only this owner's keys.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def keys_list(owner: str | None, as_json: bool) -> None:
    """List keys (never their secrets)."""
    found = _with_store(lambda store: store.list(owner=owner))
    if as_json:
        click.echo(json.dumps([k.public() for k in found], indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("id", "name", "owner", "scopes", "created", "last used", "state")
    for k in found:
        p = k.public()
        state = "revoked" if p["revoked"] else "active" if k.is_active() else "expired"
        table.add_row(
            k.id,
            k.name,
            k.owner,
            " ".join(k.scopes),
            p["created_at"] or "",
            p["last_used_at"] or "-",
            state,
        )
    Console().print(table)


@keys.command("revoke")
@click.argument("key_id")
def keys_revoke(key_id: str) -> None:
    """Revoke a key by its id; every replica refuses it within a second."""
    revoked = _with_store(lambda store: store.revoke(key_id))
    if revoked is None:
        raise click.ClickException(f"no API key with id '{key_id}'")
    click.echo(f"revoked {key_id}")


@main.group()
def usage() -> None:
    """Usage records in the store the gateway uses (DATABASE_URL or GATEWAY_DATA_DIR)."""


@usage.command("export")
@click.option("--since", default="24h", show_default=True, help="Epoch s, ISO 8601, or 24h/7d.")
@click.option("--until", default=None, help="Epoch s, ISO 8601, or a duration ago; default now.")
@click.option("--format", "fmt", type=click.Choice(["csv", "jsonl"]), default="csv")
@click.option("--user", default=None, help="Only this user's records.")
@click.option("--output", "-o", type=click.File("w"), default="-", help="File (default stdout).")
def usage_export(since: str, until: str | None, fmt: str, user: str | None, output: Any) -> None:
    """Write usage records, oldest first, as CSV or JSON lines."""
    import csv
    import time as _time

    import orjson

    from llm_gateway.api.manage.stats import parse_time
    from llm_gateway.errors import InvalidRequest
    from llm_gateway.usage.export import EXPORT_COLUMNS, export_rows

    now = _time.time()
    try:
        start = parse_time(since, "since", now)
        end = parse_time(until, "until", now) if until else now
    except InvalidRequest as exc:
        raise click.BadParameter(exc.message) from None
    writer = csv.writer(output) if fmt == "csv" else None
    if writer is not None:
        writer.writerow(EXPORT_COLUMNS)

    async def write(engine: Any) -> int:
        n = 0
        async for row in export_rows(engine, start, end, user):
            if writer is not None:
                writer.writerow(row.values())
            else:
                output.write(orjson.dumps(row).decode() + "\n")
            n += 1
        return n

    count = _with_engine(write)
    click.echo(f"{count} records", err=True)


@usage.command("prune")
@click.option(
    "--older-than-days", type=float, required=True, help="Delete records older than this."
)
def usage_prune(older_than_days: float) -> None:
    """Delete old usage records now (GATEWAY_USAGE_RETENTION_DAYS does it hourly)."""
    import time as _time

    from llm_gateway.usage.export import delete_usage_before

    before = _time.time() - older_than_days * 86_400
    deleted = _with_engine(lambda engine: delete_usage_before(engine, before))
    click.echo(f"deleted {deleted} records")


@main.group()
def token() -> None:
    """JWTs for operators."""


@token.command("create")
@click.option("--user", required=True, help="The `sub` claim: who the token is for.")
@click.option("--admin", is_flag=True, help="Add the admin scope.")
@click.option("--ttl", "ttl_s", type=int, default=3600, show_default=True, help="Seconds valid.")
@click.option("--rpm", type=int, help="Requests per minute (claim limits).")
@click.option("--tpm", type=int, help="Tokens per minute (claim limits).")
@click.option("--concurrency", type=int, help="Concurrent requests (claim limits).")
@click.option(
    "--model-limit",
    "model_limits",
    multiple=True,
    metavar="MODEL:rpm=N,tpm=N,concurrency=N",
    help="Limits for one model (repeatable), e.g. smollm2:rpm=10.",
)
def token_create(
    user: str,
    admin: bool,
    ttl_s: int,
    rpm: int | None,
    tpm: int | None,
    concurrency: int | None,
    model_limits: tuple[str, ...],
) -> None:
    """Mint an HS256 token signed with JWT_SECRET (or the data directory's secret)."""
    from llm_gateway.auth.secret import ensure_jwt_secret
    from llm_gateway.auth.tokens import mint_token
    from llm_gateway.limits.base import Limits

    settings = _settings()
    secret = ensure_jwt_secret(settings.jwt_secret, settings.data_dir)
    scopes = ("admin", "user") if admin else ("user",)
    click.echo(
        mint_token(
            secret,
            user,
            scopes=scopes,
            ttl_s=ttl_s,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            limits=_limits_claim(Limits(rpm, tpm, concurrency), model_limits),
        )
    )


def _limits_claim(own: Limits, model_limits: tuple[str, ...]) -> dict[str, Any] | None:
    def claim(lim: Limits) -> dict[str, Any]:
        return {name: value for name, value in lim.as_json().items() if value is not None}

    limits = claim(own)
    models = dict(_parse_model_limit(m) for m in model_limits)
    if models:
        limits["models"] = {model: claim(lim) for model, lim in models.items()}
    return limits or None
