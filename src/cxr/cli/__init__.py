"""The `cxr` command: one parser assembled from the commands of `cxr.cli.train` (making runs),
`cxr.cli.evaluate` (measuring them) and `cxr.cli.predict` (using them); each command's arguments
live beside the code that runs it."""

from __future__ import annotations

import argparse
import sys

from cxr.cli import accuracy, evaluate, predict, train
from cxr.cli.common import build_config
from cxr.errors import CxrError

__all__ = ["build_config", "main", "parser"]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cxr",
        description="Train, tune, evaluate, explain and serve classifiers of chest X-rays. "
        "Research software: not a medical device.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    for module in (train, evaluate, predict, accuracy):
        for name, (help_, arguments, run, parents) in module.COMMANDS.items():
            command = sub.add_parser(name, help=help_, parents=[make() for make in parents])
            arguments(command)
            command.set_defaults(func=run)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except CxrError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(
            "interrupted: the last completed epoch is checkpointed; continue with --resume",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
