"""``newsletter store``: the store as a whole (``copy``: to another file or database server)."""

from __future__ import annotations

import click

from newsletter.english import counted
from newsletter.store_copy import CopyReport, copy_store

SHORT_DIGEST = 12  # hex digits of a SHA-256 shown per table: enough to tell two apart by eye


@click.group()
def store() -> None:
    """The subscriber store as a whole: move it between SQLite and PostgreSQL."""


@store.command("copy")
@click.argument("src")
@click.argument("dst")
def copy_command(src: str, dst: str) -> None:
    """Copy the whole store from SRC to DST, each a SQLite file or a postgresql:// URL.

    DST is created (a file) or given the schema (an empty database); it must hold no rows.
    Ids and their sequences are kept. Every table's row count and SHA-256 are compared on
    both sides; on any difference nothing is kept.
    """
    click.echo("\n".join(report_lines(copy_store(src, dst))))


def report_lines(report: CopyReport) -> list[str]:
    width = max(len("table"), *(len(t.table) for t in report.tables))
    count_width = max(len("rows"), len(f"{report.rows:,}"))
    lines = [f"Copied {report.source} to {report.target}:"]
    lines.append(f"  {'table':<{width}}  {'rows':>{count_width}}  sha256")
    for table in report.tables:
        lines.append(
            f"  {table.table:<{width}}  {table.rows:>{count_width},}  {table.sha256[:SHORT_DIGEST]}"
        )
    lines.append(
        f"  {'total':<{width}}  {report.rows:>{count_width},}  {report.sha256[:SHORT_DIGEST]}"
    )
    lines.append(
        f"Row counts and SHA-256 of all {counted(len(report.tables), 'table')} match on both sides."
    )
    if "subscribers" in report.id_floors:
        lines.append(f"New subscribers get ids above {report.id_floors['subscribers']}.")
    return lines
