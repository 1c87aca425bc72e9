"""Options declared once: name, type, bounds, default and help of everything a person can set.

One `Opt` is the single source of one setting. From it come the command-line flag (`add`), the
value check of a config file key (`check_value`, `load_toml`), the configuration dataclasses'
defaults (`option`, `field_from`) and the tables in docs/cli.md and docs/daemon.md
(`markdown_table`). tests/test_cli_convention.py walks every command and holds them to it.

Conventions every command follows (docs/cli.md):
- the same thing has the same flag name and the same default in every command (`SHARED`);
- every option has help, and the help shows the default (`HelpFormatter`);
- a bad value is one line on stderr naming the flag or key and the value, exit 2.

This module is imported by the daemon: it must stay free of numpy, torch and friends.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import tomllib
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class Required:
    """Default of an option that has none: it must be given."""

    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = Required()


class OptionError(ValueError):
    """A bad option or config value; the message names the key (or flag), the value and where."""


@dataclass(frozen=True)
class Opt:
    name: str  # the config key and argparse dest: "fpr_budget"
    type: type  # int, float, str, bool, Path, or dict (SLICE=VALUE pairs)
    default: Any  # REQUIRED when it must be given
    help: str
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False  # (lo, ... instead of [lo, ...
    hi_open: bool = False
    choices: tuple[str, ...] | None = None
    metavar: str | None = None
    # A default that is not a literal value the parser sees (e.g. "3 on logs of 9+ days"): the
    # text the help and the docs show; the parser's default stays `default` (None = automatic).
    default_text: str | None = None
    # Commands whose default differs on purpose, with the reason (shown in docs/cli.md).
    # The command-tree test accepts a difference only when it is declared here.
    per_command: Mapping[str, tuple[Any, str]] = dataclasses.field(default_factory=dict)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def with_name(self, name: str) -> Opt:
        return dataclasses.replace(self, name=name)

    def bounds_text(self) -> str:
        if self.choices:
            return " | ".join(self.choices)
        if self.lo is None and self.hi is None:
            return ""
        lo = "-inf" if self.lo is None else _num(self.lo)
        hi = "inf" if self.hi is None else _num(self.hi)
        return f"{'(' if self.lo_open or self.lo is None else '['}{lo}, {hi}" \
               f"{')' if self.hi_open or self.hi is None else ']'}"

    def default_for(self, command: str | None) -> Any:
        if command is not None and command in self.per_command:
            return self.per_command[command][0]
        return self.default

    def shown_default(self, command: str | None = None) -> str:
        if self.default_text is not None and (command is None or command not in self.per_command):
            return self.default_text
        return format_value(self.default_for(command))


def _num(v: float) -> str:
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e15:
        return str(int(v))
    return f"{v:g}" if isinstance(v, float) else str(v)


def format_value(v: Any) -> str:
    """A default as a person would type it on the command line."""
    if v is REQUIRED:
        return "required"
    if v is None:
        return "none"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, dict):
        return ",".join(f"{k}={_num(x)}" for k, x in v.items()) or "none"
    if v == "":
        return '""'
    return str(v)


# ---------------------------------------------------------------- checking values

def check_value(opt: Opt, value: Any, source: str) -> Any:
    """A value from a config file (already typed by TOML) checked against its declaration."""
    where = f"{source}: '{opt.name}'"
    if opt.type is bool:
        if not isinstance(value, bool):
            raise OptionError(f"{where} must be true or false, not {value!r}")
        return value
    if opt.type is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise OptionError(f"{where} must be an integer, not {value!r}")
    elif opt.type is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise OptionError(f"{where} must be a number, not {value!r}")
        value = float(value)
        if math.isnan(value):
            raise OptionError(f"{where} must be a number, not nan")
    elif opt.type in (str, Path):
        if not isinstance(value, str):
            raise OptionError(f"{where} must be a string, not {value!r}")
    elif opt.type is dict:
        if not isinstance(value, dict):
            raise OptionError(f"{where} must be a table of name = number, not {value!r}")
        out = {}
        for k, v in value.items():
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise OptionError(f"{where}.{k} must be a number, not {v!r}")
            _check_range(opt, float(v), f"{where}.{k}")
            out[str(k)] = float(v)
        return out
    _check_range(opt, value, where)
    if opt.choices is not None and value not in opt.choices:
        raise OptionError(f"{where} must be one of {', '.join(opt.choices)}, not {value!r}")
    return value


def _check_range(opt: Opt, value: Any, where: str) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return
    bad = (opt.lo is not None and (value < opt.lo or (opt.lo_open and value == opt.lo))) or \
          (opt.hi is not None and (value > opt.hi or (opt.hi_open and value == opt.hi)))
    if bad:
        raise OptionError(f"{where} = {value!r} is out of range {opt.bounds_text()}")


def suggest(key: str, known: Iterable[str]) -> str:
    """' (did you mean x?)' for a mistyped key, else ''."""
    known = list(known)
    near = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
    near += [k for k in known if k.split("_")[0] == key.split("_")[0] and k not in near]
    return f" (did you mean {', '.join(near[:3])}?)" if near else ""


def check_table(values: Mapping[str, Any], opts: Mapping[str, Opt], source: str,
                what: str = "key") -> dict[str, Any]:
    """Every key known, every value of its type and in range; returns the checked values.
    The message of the first problem names the file, the key and the value."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key not in opts:
            raise OptionError(f"{source}: unknown {what} '{key}'{suggest(key, opts)}")
        out[key] = check_value(opts[key], value, source)
    return out


def load_toml(path: str | Path, table: str) -> dict[str, Any]:
    """A TOML config file: its keys at the top level or under `[table]`."""
    p = Path(path)
    if not p.is_file():
        raise OptionError(f"config file not found: {p}")
    try:
        with open(p, "rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise OptionError(f"{p}: not valid TOML: {e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise OptionError(f"{p}: cannot read: {e}") from None
    if table in data:
        if not isinstance(data[table], dict):
            raise OptionError(f"{p}: '{table}' must be a table ([{table}])")
        rest = sorted(set(data) - {table})
        if rest:
            raise OptionError(f"{p}: keys outside [{table}]: {', '.join(rest)}")
        data = data[table]
    return data


# ---------------------------------------------------------------- dataclass fields

def option(default: T, help: str, *, lo: float | None = None, hi: float | None = None,
           lo_open: bool = False, hi_open: bool = False,
           choices: Sequence[str] | None = None, metavar: str | None = None,
           default_text: str | None = None,
           per_command: Mapping[str, tuple[Any, str]] | None = None) -> T:
    """A dataclass field that is also an option declaration (name and type come from the field).
    Use as `port: int = option(7411, "public TCP port", lo=0, hi=65535)`."""
    decl = {"default": default, "help": help, "lo": lo, "hi": hi, "lo_open": lo_open,
            "hi_open": hi_open, "choices": tuple(choices) if choices else None,
            "metavar": metavar, "default_text": default_text,
            "per_command": dict(per_command or {})}
    if isinstance(default, dict | list | set):
        copy = type(default)(default)
        return dataclasses.field(default_factory=lambda: type(copy)(copy),  # type: ignore[return-value]
                                 metadata={"opt": decl})
    return dataclasses.field(default=default, metadata={"opt": decl})  # type: ignore[no-any-return]


def field_from(opt: Opt) -> Any:
    """A dataclass field whose default and declaration are a shared `Opt` (e.g. SHARED[...])."""
    return option(opt.default, opt.help, lo=opt.lo, hi=opt.hi, lo_open=opt.lo_open,
                  hi_open=opt.hi_open, choices=opt.choices, metavar=opt.metavar,
                  default_text=opt.default_text, per_command=opt.per_command)


_TYPES = {"int": int, "float": float, "str": str, "bool": bool, "Path": Path}


def options_of(cls: type) -> dict[str, Opt]:
    """The declarations of a dataclass built with `option`/`field_from`, in field order."""
    hints = typing.get_type_hints(cls)
    out: dict[str, Opt] = {}
    for f in dataclasses.fields(cls):
        decl = f.metadata.get("opt")
        if decl is None:
            continue
        t = hints[f.name]
        origin = typing.get_origin(t)
        if origin is dict:
            typ: type = dict
        elif origin is not None:  # X | None
            args = [a for a in typing.get_args(t) if a is not type(None)]
            typ = args[0] if len(args) == 1 and isinstance(args[0], type) else str
        else:
            typ = t
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else REQUIRED)
        out[f.name] = Opt(name=f.name, type=typ, **{**decl, "default": default})
    return out


def build_config(cls: Callable[..., T], opts: Mapping[str, Opt],
                 layers: Sequence[tuple[str, Mapping[str, Any]]]) -> T:
    """cls(**defaults <- each layer in turn); each layer is (source name, values); a None value
    means "not given". Unknown keys, wrong types and values out of range raise OptionError."""
    values: dict[str, Any] = {}
    for source, layer in layers:
        checked = check_table({k: v for k, v in layer.items() if v is not None}, opts, source)
        unknown = [k for k in layer if k not in opts]
        if unknown:  # a None value of an unknown key is still a typo
            raise OptionError(f"{source}: unknown key '{unknown[0]}'{suggest(unknown[0], opts)}")
        values.update(checked)
    return cls(**values)


# ---------------------------------------------------------------- command line

def _parse_typed(opt: Opt) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        if opt.type is int:
            try:
                v: Any = int(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"must be an integer, not {text!r}") from None
        elif opt.type is float:
            try:
                v = float(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"must be a number, not {text!r}") from None
            if math.isnan(v):
                raise argparse.ArgumentTypeError("must be a number, not nan")
        elif opt.type is Path:
            v = Path(text)
        else:
            v = text
        try:
            _check_range(opt, v, "value")
        except OptionError:
            raise argparse.ArgumentTypeError(
                f"{text} is out of range {opt.bounds_text()}") from None
        return v
    parse.__name__ = opt.type.__name__
    return parse


def add(parser: argparse.ArgumentParser | Any, opt: Opt, *, help: str | None = None,
        default: Any = dataclasses.MISSING, required: bool | None = None,
        config_default: bool = False, flag: str | None = None,
        choices: Sequence[str] | None = None, shown: str | None = None) -> argparse.Action:
    """Add `opt` as a flag. `help` adds command-specific context to (never replaces the need
    for) the declaration; `default` must equal the declared one (or its per-command entry) and
    exists only for commands whose default is taken elsewhere (config_default: the flag's value
    is None unless given, and the daemon layers it over its config file); `shown` is the help's
    default text where the command works one out (e.g. "a throwaway redis-server")."""
    prog = getattr(parser, "prog", None) or getattr(getattr(parser, "_container", None),
                                                    "prog", "")
    command = _command_of(prog)
    if default is dataclasses.MISSING:
        default = None if config_default else opt.default_for(command)
    if required is None:
        required = default is REQUIRED
    kw: dict[str, Any] = {"dest": opt.name, "help": help or opt.help}
    if opt.metavar:
        kw["metavar"] = opt.metavar
    elif not opt.choices and opt.type is not bool:
        kw["metavar"] = {int: "N", float: "X", Path: "PATH"}.get(opt.type, "TEXT")
    if opt.type is bool and not config_default:
        if default not in (False, REQUIRED):
            raise ValueError(f"{opt.flag}: a switch defaults to false")
        kw["action"] = "store_true"
    elif opt.type is dict:
        kw["action"] = _PairsAction
        kw["metavar"] = opt.metavar or "NAME=VALUE"
        kw["default"] = None if default is REQUIRED else default
        kw["type"] = _parse_pair(opt)
    else:
        if opt.type is bool:  # a daemon switch given on the command line: --x true|false
            kw["type"] = _parse_bool
            kw["metavar"] = "true|false"
        else:
            kw["type"] = _parse_typed(opt)
        if choices is not None and opt.choices and not set(choices) <= set(opt.choices):
            raise ValueError(f"{opt.flag}: choices {choices} are not among {opt.choices}")
        if choices or opt.choices:
            kw["choices"] = tuple(choices or opt.choices or ())
        kw["default"] = None if default is REQUIRED else default
        kw["required"] = bool(required)
    if "default" not in kw:
        kw["required"] = bool(required)
    action = parser.add_argument(flag or opt.flag, **kw)
    action.slidr_opt = opt  # type: ignore[attr-defined]
    one_of = isinstance(parser, argparse._MutuallyExclusiveGroup) and bool(parser.required)
    if shown is None and not required and default is REQUIRED and not one_of:
        # Declared required, optional in this command: needed only in some uses; the help
        # says which (`shown`). One of a required group has its usage line say so.
        raise ValueError(f"{prog} {opt.flag}: optional here, so give `shown` (when it is "
                         "needed)")
    action.slidr_shown_default = (  # type: ignore[attr-defined]
        shown if shown is not None else
        None if required or one_of or kw.get("action") == "store_true"
        else opt.shown_default(command))
    action.slidr_range = (  # type: ignore[attr-defined]
        opt.bounds_text() if not opt.choices and opt.type is not bool else "")
    return action  # type: ignore[no-any-return]


def _parse_pair(opt: Opt) -> Callable[[str], tuple[str, float]]:
    def parse(text: str) -> tuple[str, float]:
        k, sep, v = text.partition("=")
        try:
            value = float(v)
        except ValueError:
            sep = ""
        if not sep or not k.strip():
            raise argparse.ArgumentTypeError(f"expects {opt.metavar or 'NAME=VALUE'}, "
                                             f"not {text!r}")
        try:
            _check_range(opt, value, "value")
        except OptionError:
            raise argparse.ArgumentTypeError(
                f"{text}: {v} is out of range {opt.bounds_text()}") from None
        return k.strip(), value
    parse.__name__ = "NAME=VALUE"
    return parse


class _PairsAction(argparse.Action):
    """Repeatable NAME=VALUE: the first one given replaces the default table."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        cur = getattr(namespace, self.dest, None)
        table = {} if cur is None or cur is self.default else dict(cur)
        k, v = values
        table[k] = v
        setattr(namespace, self.dest, table)


def _parse_bool(text: str) -> bool:
    t = text.strip().lower()
    if t in ("true", "1", "yes", "on"):
        return True
    if t in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"must be true or false, not {text!r}")


def _command_of(prog: str) -> str | None:
    parts = prog.split()
    return " ".join(parts[1:]) if len(parts) > 1 else None


class HelpFormatter(argparse.HelpFormatter):
    """Help that shows each option's default (the declared one for daemon flags whose parser
    default is None), and keeps descriptions' paragraphs."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32, width=100)

    def _get_help_string(self, action: argparse.Action) -> str:
        h = action.help or ""
        if "%(default)" in h or "(default" in h:
            return h
        shown = getattr(action, "slidr_shown_default", _MISSING_SHOWN)
        if shown is _MISSING_SHOWN:
            if action.required or action.default is None or action.default is False \
                    or action.default == argparse.SUPPRESS or action.nargs == 0 \
                    or isinstance(action, argparse._HelpAction | argparse._VersionAction):
                return h
            shown = format_value(action.default)
        rng = getattr(action, "slidr_range", "")
        notes = ([f"default: {shown}"] if shown is not None else []) + \
            ([f"range {rng}"] if rng else [])
        if not notes:
            return h
        return f"{h} ({'; '.join(notes)})".replace("%", "%%")

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        import textwrap
        paras = text.split("\n\n")
        return "\n\n".join(textwrap.fill(" ".join(p.split()), width, initial_indent=indent,
                                         subsequent_indent=indent) for p in paras)


_MISSING_SHOWN = object()


# ---------------------------------------------------------------- docs

def markdown_table(opts: Iterable[Opt], *, with_flag: bool = True, key_title: str = "flag",
                   command: str | None = None) -> str:
    rows = [f"| {key_title} | type | default | range | meaning |", "|---|---|---|---|---|"]
    for o in opts:
        key = f"`{o.flag}`" if with_flag else f"`{o.name}`"
        typ = {dict: "NAME=VALUE", Path: "path"}.get(o.type, o.type.__name__)
        extra = "".join(f"; `{c}`: `{format_value(v)}` ({why})"
                        for c, (v, why) in o.per_command.items())
        default = o.shown_default(command)
        default = default if o.default_text is not None else f"`{default}`"
        rng = o.bounds_text().replace("|", "\\|")
        rows.append(f"| {key} | {typ} | {default}{extra} | {rng} | "
                    f"{o.help.replace('|', '/')} |")
    return "\n".join(rows)
