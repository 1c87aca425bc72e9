"""What every command of `slidr` and `slidrd` shares (docs/cli.md): the parser (one-line usage
errors, help that shows defaults), `--version`, the switches every leaf command has (`--json`,
`--quiet`, `--debug`, and `--progress` where work can take long), and the one place that turns
an exception into an exit code and one line on stderr.

Light on purpose (the daemon imports it): no numpy, no pyarrow at import time.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NoReturn

from . import exits, progress
from .defaults import GLOBAL
from .options import HelpFormatter, add


class Parser(argparse.ArgumentParser):
    """argparse with help that shows defaults and a usage error as one line (exit 2)."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        kw.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kw)

    def error(self, message: str) -> NoReturn:
        self.exit(exits.USAGE, f"{self.prog}: error: {one_line(message)} "
                               f"(see {self.prog} --help)\n")


def version_text(prog: str) -> str:
    import platform

    from slidr import __version__
    try:
        from slidr.ext import NATIVE, PURE_PYTHON
        native = "yes" if NATIVE else (
            "no (SLIDR_PURE_PYTHON=1)" if PURE_PYTHON else "no (pure-Python reference)")
    except (ImportError, ValueError):  # a version line must never fail
        native = "unknown"
    return (f"{prog} {__version__} (Python {platform.python_version()}, native kernel: "
            f"{native})")


class _VersionAction(argparse.Action):
    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS,
                 default: Any = argparse.SUPPRESS, help: str | None = None) -> None:
        super().__init__(option_strings=option_strings, dest=dest, default=default, nargs=0,
                         help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        print(version_text(parser.prog.split()[0]))
        parser.exit(0)


def add_version(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--version", action=_VersionAction,
                        help="print the version (and whether the native kernel is built), exit")


def subparsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            seen: set[int] = set()
            for p in a.choices.values():
                if id(p) not in seen:  # aliases map to the same parser
                    seen.add(id(p))
                    yield p


def leaves(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """Every command that runs something (a parser without subcommands)."""
    subs = list(subparsers(parser))
    if not subs:
        yield parser
    for p in subs:
        yield from leaves(p)


def finish_tree(root: argparse.ArgumentParser, long_running: Iterable[str]) -> None:
    """Give every leaf command the switches all commands have (`--json`, `--quiet`, `--debug`,
    `--version`); `--progress` to those whose work can take more than a few seconds (given by their path, e.g. "bench run")."""
    long = set(long_running)
    for leaf in leaves(root):
        path = " ".join(leaf.prog.split()[1:])
        have = {s for a in leaf._actions for s in a.option_strings}
        for name in ("json", "quiet", "progress", "debug"):
            if name == "progress" and path not in long:
                continue
            if GLOBAL[name].flag not in have:
                add(leaf, GLOBAL[name])
        if "--version" not in have:
            add_version(leaf)
        for a in leaf._actions:  # one metavar per kind of value: N, X (as slidr/options.py)
            if a.option_strings and a.nargs != 0 and a.metavar is None and not a.choices:
                a.metavar = {int: "N", float: "X"}.get(a.type)  # type: ignore[call-overload]
        leaf.set_defaults(_prog=leaf.prog)


def one_line(text: str) -> str:
    return "; ".join(p.strip() for p in str(text).strip().splitlines() if p.strip())


def classify(e: BaseException) -> tuple[int, str]:
    """An exception -> (exit code, one-line message)."""
    if isinstance(e, exits.CommandError):
        return e.code, one_line(str(e))
    if type(e).__name__ == "RegistryError":  # slidr.registry: unknown version, no previous
        return exits.USAGE, one_line(str(e))
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        # FileNotFoundError and friends: "PATH: No such file or directory".
        code = exits.USAGE if isinstance(e, FileNotFoundError | IsADirectoryError
                                         | NotADirectoryError | PermissionError) \
            else exits.FAILED
        return code, f"{e.filename}: {e.strerror}"
    if isinstance(e, FileNotFoundError | IsADirectoryError | NotADirectoryError
                  | PermissionError | ValueError):
        # Contract errors, bad paths, bad values, unreadable inputs (messages name them).
        msg = one_line(str(e)) or type(e).__name__
        if _is_arrow(e) and ":" not in msg.split(" ")[0]:
            msg = f"cannot read input: {msg}"
        return exits.USAGE, msg
    return exits.FAILED, f"{type(e).__name__}: {one_line(str(e))} (run with --debug for the " \
                         "traceback)"


def _is_arrow(e: BaseException) -> bool:
    return type(e).__module__.startswith("pyarrow")


def parse_and_run(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> int:
    """A program's main(): parse `argv` and run the chosen command. A usage error (2), --help
    and --version (0) come back as codes, not as an exit."""
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 2
    return run(args._prog, args.func, args)


def run(prog: str, func: Callable[[argparse.Namespace], int | None], args: argparse.Namespace,
        debug: bool | None = None) -> int:
    """Run a command function; exceptions become the exit-code table's codes and one line on
    stderr (plus the traceback with --debug)."""
    debug = bool(getattr(args, "debug", False)) if debug is None else debug
    progress.configure(quiet=bool(getattr(args, "quiet", False)),
                       progress=bool(getattr(args, "progress", False)))
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        print(f"\n{prog}: interrupted", file=sys.stderr)
        return exits.INTERRUPTED
    except BrokenPipeError:
        # `| head`: the reader has what it wanted. Later writes (and the exit's flush) go to
        # /dev/null so no second error follows.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return exits.PIPE_CLOSED
    except SystemExit:
        raise
    except BaseException as e:  # noqa: BLE001 - every error ends as one line and a code
        code, msg = classify(e)
        if debug:
            traceback.print_exc()
        elif os.environ.get("SLIDR_DEBUG"):
            traceback.print_exc()
        word = "error" if code in (exits.USAGE, exits.FAILED) else "refused"
        if code == exits.CHECK_FAILED:
            word = "check failed"
        print(f"{prog}: {word}: {msg}", file=sys.stderr)
        return code
