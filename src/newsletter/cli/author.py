"""The author's commands: init, check, preview."""

from __future__ import annotations

import click

COMMANDS: list[click.Command] = []
