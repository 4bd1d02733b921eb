"""``frostline`` on the command line. Each subcommand is one ``add_<name>`` function below; errors in user input
exit with status 2 and a one-line message."""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from .errors import FrostlineError

__all__ = ["main"]


class UsageError(Exception):
    """A CLI argument is wrong: print the message, exit 2."""


def _model_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", default="small_cnn",
                        help="built-in model (seed_cnn, small_cnn, tiny_resnet, minilm) or a transformers model "
                             "directory (default: small_cnn)")
    parser.add_argument("--freeze", action="append", default=[], metavar="SPEC",
                        help="freeze the parameters this glob selects (repeatable; '!glob' excludes)")


def load_and_freeze(args: argparse.Namespace):
    """The model named on the command line, with its ``--freeze`` specs applied."""
    from . import freeze
    from .models import load_model

    try:
        model = load_model(args.model)
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from exc
    if args.freeze:
        positives = [s for s in args.freeze if not s.startswith("!")] or ["*"]
        freeze(model, positives + [s for s in args.freeze if s.startswith("!")])
    return model


def add_summary(sub) -> None:
    parser = sub.add_parser("summary", help="trainable / frozen elements per top-level module")
    _model_argument(parser)

    def run(args: argparse.Namespace) -> int:
        from .summary import summary

        print(summary(load_and_freeze(args)))
        return 0

    parser.set_defaults(run=run)


COMMANDS: list[Callable] = [add_summary]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="frostline", description="Precise, fast and visible parameter freezing.")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (UsageError, FrostlineError) as exc:
        print(f"frostline {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
