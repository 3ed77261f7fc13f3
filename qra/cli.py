"""The ``qra`` command line."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

from . import featuremaps

app = typer.Typer(
    help="qra: kernelized, quantum-ready attention for pretrained encoders.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Keep sub-commands (``qra featuremaps``) even while there is only one."""


@app.command("featuremaps")
def list_featuremaps(
    as_json: bool = typer.Option(False, "--json", help="Print the registry as JSON instead of a table."),
) -> None:
    """List the feature maps registered under the 'qra.featuremaps' entry-point group."""
    listing = featuremaps.available()
    if as_json:
        typer.echo(json.dumps({name: info.as_dict() for name, info in listing.items()}, indent=2))
        return
    table = Table(title=f"Feature maps (entry-point group {featuremaps.ENTRY_POINT_GROUP!r})")
    for column in ("name", "distribution", "version", "summary", "status"):
        table.add_column(column, overflow="fold")
    for info in listing.values():
        status = "ok" if info.status == "ok" else f"[red]error[/red]: {info.error}"
        table.add_row(info.name, info.distribution, info.version, info.summary, status)
    Console(width=160).print(table)


def main() -> None:
    app()
