"""The ``distkm`` command: parse the arguments (:mod:`~distkm.cli.parser`), run the command
(:mod:`~distkm.cli.commands`), and report every failure in one line (:mod:`~distkm.cli.errors`)."""

from __future__ import annotations

import sys

import dask.config

from distkm.cli.errors import EXIT_ERROR, EXIT_INTERRUPTED, one_line, setup_logging
from distkm.cli.parser import build_parser


def main(argv=None):
    """Entry point of the ``distkm`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    setup_logging(quiet=getattr(args, "quiet", False))
    try:
        # Imported once the arguments are good: the commands bring in the cluster, scikit-learn and the
        # applications (seconds), which --help, --version and a usage error never need.
        from distkm.cli import commands

        with dask.config.set({"distkm.progress": not getattr(args, "quiet", False)}):
            return getattr(commands, args.command_function)(args) or 0
    except KeyboardInterrupt:
        print("distkm: interrupted; nothing was written", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:
        if args.debug:
            raise
        print(f"distkm: error: {one_line(e, parser)}", file=sys.stderr)
        return EXIT_ERROR
