"""Command-line shell and composition root: `migrate` and `integrity` (also `python -m toolkit`).

Each command parses its options, loads the content it needs through ``toolkit.content`` (the
migrations, the rule catalogue, the attacks), makes one call into the library, and renders the
result. No SQL and no decisions live here. Library modules are imported inside commands, so
`migrate status` never pays for sqlglot, sqlite-utils or the rule catalogue.
"""
from __future__ import annotations

import sys

import click

from .common import CONTEXT, run
from .integrity import integrity_group
from .migrate import migrate_group

__all__ = ["CONTEXT", "run", "migrate_group", "integrity_group", "toolkit_group", "migrate_main", "integrity_main", "main"]


# -- entry points ----------------------------------------------------------------------------------

@click.group(name="toolkit", context_settings=CONTEXT)
def toolkit_group() -> None:
    """The trading-database toolkit: `migrate` and `integrity`."""


toolkit_group.add_command(migrate_group)
toolkit_group.add_command(integrity_group)


def migrate_main() -> None:
    sys.exit(run(migrate_group, prog_name="migrate"))


def integrity_main() -> None:
    sys.exit(run(integrity_group, prog_name="integrity"))


def main() -> None:
    """`python -m toolkit`."""
    sys.exit(run(toolkit_group, prog_name="python -m toolkit"))
