"""The command line: `llm-gateway serve` (also `python -m llm_gateway serve`).

Every Settings field becomes a `serve` option, so `--help` documents each
setting with its environment variable and default; options given on the
command line override the environment.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import click
from pydantic import ValidationError

from llm_gateway.settings import Settings


def _env_name(name: str) -> str:
    field = Settings.model_fields[name]
    alias = field.validation_alias
    choices = getattr(alias, "choices", None)
    if choices:
        return str(choices[0])
    return f"GATEWAY_{name.upper()}"


_METAVARS = {
    "<class 'int'>": "INT",
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


def configure_logging(level: str) -> None:
    root = logging.getLogger()
    root.handlers.clear()
    if sys.stderr.isatty():
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(show_path=False, rich_tracebacks=True)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level)


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
    configure_logging(settings.log_level)
    from llm_gateway.server import run

    sys.exit(run(settings))
