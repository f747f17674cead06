"""The command line shared by the subcommands that copy versions from one registry into another."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def copy_command(subparsers, name: str, run: Callable[[argparse.Namespace], int], *, help: str,
                 description: str, source_metavar: str, source_help: str,
                 source_required: bool = False) -> argparse.ArgumentParser:
    """The ``name`` subcommand, running ``run``, with ``--from`` (``args.source``): the registry
    copied from. Returns its parser, for the command's other arguments."""
    p = subparsers.add_parser(name, help=help, description=description)
    p.add_argument("--from", dest="source", required=source_required, metavar=source_metavar, help=source_help)
    p.set_defaults(func=run)
    return p
