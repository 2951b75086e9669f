"""Command line: ``finesam segment``, ``eval``, ``train``, ``serve``, ``export`` and ``label-studio``
(one module each, named after the command; ``label-studio`` is :mod:`finesam.cli.label_studio`),
and ``make demo`` (:mod:`finesam.cli.demo`). The options of the model to load and its loading are
shared from :mod:`finesam.cli.model_options`, the HTTP commands' address, port and cache from
:mod:`finesam.cli.http_options`. Each command imports what needs an optional extra
only when it runs. Every refusal is one line on stderr and exit code 2, naming the options where
the library names parameters (:func:`command_line_message`); an interruption exits 130."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import NoReturn, Sequence

from ..errors import FinesamError, InvalidInputError, name_parameters, one_line

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
COMMANDS = ("segment", "eval", "train", "serve", "export", "label-studio")
#: Library parameters whose option is not ``--`` + the name with dashes.
OPTION_OF_PARAMETER = {"images_dir": "--images", "formats": "--format", "allowed_hosts": "--allow-host", "out_dir": "--out",
                       "datasets": "--data"}


class OneLineParser(argparse.ArgumentParser):
    """argparse, with a usage error printed as one line (and exit code 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="finesam", description="High-quality promptable segmentation.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    for command in COMMANDS:
        _command_module(command).add_parser(commands)
    return parser


def _command_module(command: str):
    """The module of a command (``label-studio`` -> ``finesam.cli.label_studio``)."""
    return importlib.import_module(f"{__name__}.{command.replace('-', '_')}")


def option_of(parameter: str) -> str:
    """The command-line option that sets a library parameter (``max_steps`` -> ``--max-steps``)."""
    return OPTION_OF_PARAMETER.get(parameter, "--" + parameter.replace("_", "-"))


def command_line_message(error: FinesamError) -> str:
    """An error's message on one line, naming options where the library names parameters."""
    if isinstance(error, InvalidInputError) and error.parameters:
        return one_line(name_parameters(error.template, {p: option_of(p) for p in error.parameters}))
    return one_line(error)


def fail(command: str, message: str) -> int:
    """Print ``finesam COMMAND: message`` as one line on stderr; returns the usage exit code."""
    print(f"finesam {command}: {message}", file=sys.stderr)
    return EXIT_USAGE


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _command_module(args.command).run(args)
    except FinesamError as error:
        return fail(args.command, command_line_message(error))
    except OSError as error:  # writing outputs: full disk, permissions, a path that vanished
        where = f" {error.filename}" if error.filename else ""
        return fail(args.command, f"cannot read or write{where}: {error.strerror or error}")
    except KeyboardInterrupt:
        print(f"\nfinesam {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
