"""How the ``distkm`` command reports: one line on stderr for every failure, distkm's own log lines, quiet libraries.

Every failure ends in one line (``distkm: error: ...``) and exit code 1;
``--debug`` shows the traceback instead. The library names its parameters
(``overwrite=True``); the line names the command's flags (``--overwrite``).
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from contextlib import contextmanager

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130


def one_line(error, parser):
    """The line that reports ``error``: its message in the command's words, or its type and first line."""
    message = str(error).strip().splitlines()
    text = message[0] if message else ""
    known = (ValueError, TypeError, OSError)  # OSError covers missing files, full disks, unreachable hosts
    if not (isinstance(error, known) and text):
        text = f"{type(error).__name__}: {text} (run with --debug for the traceback)"
    return _as_flags(text, parser)


def setup_logging(quiet):
    """distkm's own log lines (lost workers, relocations, checkpoints) on stderr; other libraries stay quiet."""
    logger = logging.getLogger("distkm")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("distkm: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    # aiohttp (under s3fs) reports its sessions still open when the process ends ("Unclosed client
    # session") through asyncio's logger: harmless at exit, and noise on the terminal.
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)


class _StderrHandler(logging.StreamHandler):
    """A handler that writes to ``sys.stderr`` as it is when a line is logged.

    ``main`` may run several times in one process (job scripts, tests, notebooks) with
    ``sys.stderr`` swapped in between; a handler holding the first stream would write to a closed file.
    """

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def _as_flags(text, parser):
    """The library names its parameters (``overwrite=True``, ``n must ...``); the command line has flags.

    ``name=True`` becomes ``--name``, ``name=VALUE`` (a placeholder in capitals)
    ``--name VALUE``, and a leading ``name must``/``needs`` ``--name ...``,
    for the names that are options of some command.
    """
    flags = {action.dest for sub in _subparsers(parser) for action in sub._actions if action.option_strings}

    def flag(name):
        return f"--{name.replace('_', '-')}" if name in flags else None

    text = re.sub(r"\b([a-z][a-z_]*)=True\b", lambda m: flag(m[1]) or m[0], text)
    text = re.sub(r"\b([a-z][a-z_]*)=(?=[A-Z][A-Za-z]*\b)", lambda m: f"{flag(m[1])} " if flag(m[1]) else m[0], text)
    return re.sub(r"^([a-z][a-z_]*)(?= (must|needs) )", lambda m: flag(m[1]) or m[0], text)


def _subparsers(parser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            yield from action.choices.values()


@contextmanager
def distributed_logs(level):
    """distributed's loggers at ``level`` while in the block (its config gives some a level of their own)."""
    loggers = [logging.getLogger(name) for name in
               ["distributed", *(n for n in logging.root.manager.loggerDict if n.startswith("distributed."))]]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(level)
    try:
        yield
    finally:
        for logger, previous in zip(loggers, levels):
            logger.setLevel(previous)


