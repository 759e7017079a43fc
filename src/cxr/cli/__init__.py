"""The `cxr` command: one parser assembled from the commands of `cxr.cli.train` (making runs),
`cxr.cli.evaluate` (measuring them) and `cxr.cli.predict` (using them); each command's arguments
live beside the code that runs it."""

from __future__ import annotations

import argparse
import importlib
import sys

from cxr.cli.common import build_config
from cxr.errors import CxrError

__all__ = ["build_config", "main", "parser"]


COMMAND_MODULES = ("train", "evaluate", "predict", "accuracy")


def parser(modules: tuple[str, ...] = COMMAND_MODULES) -> argparse.ArgumentParser:
    """The parser of the commands in `modules` (cxr.cli.NAME), imported only when asked for."""
    p = argparse.ArgumentParser(
        prog="cxr",
        description="Train, tune, evaluate, explain and serve classifiers of chest X-rays. "
        "Research software: not a medical device.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    for module_name in modules:
        module = importlib.import_module(f"cxr.cli.{module_name}")
        for name, (help_, arguments, run, parents) in module.COMMANDS.items():
            command = sub.add_parser(name, help=help_, parents=[make() for make in parents])
            arguments(command)
            command.set_defaults(func=run)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # `cxr serve` builds only its own command: the server then never imports the training,
    # evaluation and report code (scikit-learn, matplotlib, ...) that it does not use
    args = parser(("serve",) if argv[:1] == ["serve"] else COMMAND_MODULES).parse_args(argv)
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
