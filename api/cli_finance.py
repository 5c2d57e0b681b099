"""`giftledger export`: the finance export on the command line, with a progress bar on stderr.

It writes the same bytes as `GET /v1/exports/ledger` and the manifest beside them, as
FILE.manifest.json. Both are first written under a `.partial` name and renamed when complete,
the manifest last, so a receiver that waits for the manifest never reads half a file.
"""

from __future__ import annotations

import asyncio
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import click
import msgspec

from api.ledger_export import (
    ExportFormat,
    ExportKind,
    ExportQuery,
    LedgerExport,
    Manifest,
    ParquetUnavailable,
    encode_manifest,
    require_parquet,
)
from projections.ledger_stream import Decode, count_ledger, head_position

PARTIAL_SUFFIX = ".partial"
MANIFEST_SUFFIX = ".manifest.json"


class Instant(click.ParamType):
    """An ISO 8601 instant with a time zone."""

    name = "instant"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, datetime):
            return value
        try:
            instant = datetime.fromisoformat(value)
        except ValueError:
            self.fail(f"{value!r} is not ISO 8601, e.g. 2026-01-01T00:00:00Z", param, ctx)
        if instant.tzinfo is None:
            self.fail(f"{value!r} needs a time zone, e.g. Z or +01:00", param, ctx)
        return instant


def manifest_path(output: Path) -> Path:
    return output.with_name(output.name + MANIFEST_SUFFIX)


def _partial(path: Path) -> Path:
    return path.with_name(path.name + PARTIAL_SUFFIX)


async def write_export(url: str, decode: Decode, query: ExportQuery, output: Path) -> Manifest:
    """Export into `output` and its manifest file; returns the manifest."""
    pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
    try:
        through = await head_position(pool)
        spec = query.through(through)
        total = await count_ledger(pool, spec.occurred_from, spec.occurred_to, through)
        export = LedgerExport(pool, decode, spec)
        label = f"exporting {total} events"
        with (
            click.progressbar(length=total, label=label, file=sys.stderr) as bar,
            _partial(output).open("wb") as sink,
        ):
            async for chunk in export.chunks():
                sink.write(chunk)
                bar.update(export.tally.events - bar.pos)
    except BaseException:
        _partial(output).unlink(missing_ok=True)  # Half an export is no export.
        raise
    finally:
        await pool.close()
    manifest = export.manifest()
    _partial(manifest_path(output)).write_bytes(msgspec.json.format(encode_manifest(manifest)))
    os.replace(_partial(output), output)
    os.replace(_partial(manifest_path(output)), manifest_path(output))
    return manifest


@click.command("export")
@click.option("--from", "occurred_from", required=True, type=Instant(),
              help="First instant (inclusive), ISO 8601 with a time zone.")  # fmt: skip
@click.option("--to", "occurred_to", required=True, type=Instant(),
              help="Last instant (exclusive), ISO 8601 with a time zone.")  # fmt: skip
@click.option("--format", "format_", type=click.Choice([f.value for f in ExportFormat]),
              default="csv", show_default=True)  # fmt: skip
@click.option("--kind", type=click.Choice([k.value for k in ExportKind]), default="events",
              show_default=True)  # fmt: skip
@click.option("--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The file to write; its manifest goes to FILE.manifest.json.")  # fmt: skip
def export_command(
    occurred_from: datetime, occurred_to: datetime, format_: str, kind: str, output: Path
) -> None:
    """Export the ledger's events or postings that occurred in [--from, --to)."""
    from api.bootstrap import database_url, prepare_database
    from api.service import open_ledger
    from api.settings import Settings

    if occurred_from >= occurred_to:
        raise click.BadParameter("--from must be before --to", param_hint="--from")
    query = ExportQuery(ExportKind(kind), ExportFormat(format_), occurred_from, occurred_to)
    if query.format is ExportFormat.PARQUET:
        try:
            require_parquet()
        except ParquetUnavailable as exc:
            raise click.ClickException(str(exc)) from None
    settings = Settings.from_env()
    url = database_url(settings)
    asyncio.run(prepare_database(url, settings))
    ledger = open_ledger(url)
    try:
        manifest = asyncio.run(write_export(url, ledger.mapper.to_domain_event, query, output))
    finally:
        ledger.close()
    click.echo(
        f"wrote {manifest.rows} {kind} rows of {manifest.events} events to {output}"
        f" (through position {manifest.through_position}); manifest {manifest_path(output)}"
    )
