"""Command line: ``finesam segment`` and ``finesam eval``; each command's module is imported
only when it runs, so optional extras are needed only by the commands that use them."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

EXIT_USAGE = 2
COMMANDS = ("segment", "eval")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="finesam", description="High-quality promptable segmentation.")
    commands = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        importlib.import_module(f"{__name__}.{command}").add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return importlib.import_module(f"{__name__}.{args.command}").run(args)


if __name__ == "__main__":
    sys.exit(main())
