"""The command-line convention (docs/cli.md), held over the whole command tree of `slidr` and
`slidrd`: one name and one default per thing, help with its default on every option, the
switches every command has; and one default per option across the config loaders, the flags and
the docs. Fast: builds the parsers, runs nothing."""

from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path

import pytest
from slidr.slidrd import config as daemon_config
from slidr.slidrd.main import build_parser as slidrd_parser

from slidr import defaults, docgen
from slidr.cli import LONG_RUNNING
from slidr.cli import build_parser as slidr_parser
from slidr.command import leaves
from slidr.options import REQUIRED, Opt, format_value, options_of

REPO = Path(__file__).resolve().parent.parent

# Names that once meant the same thing as a flag of another command. They must not come back.
RETIRED = {"--fpr-target": "--fpr-budget", "--socket": "--admin-socket", "--log": "--clicks"}


def _leaves() -> list[argparse.ArgumentParser]:
    return [*leaves(slidr_parser()), *leaves(slidrd_parser())]


def _command(leaf: argparse.ArgumentParser) -> str:
    return " ".join(leaf.prog.split()[1:])


def _options(leaf: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in leaf._actions if a.option_strings
            and not isinstance(a, argparse._HelpAction | argparse._VersionAction)]


def _no_default(v: object) -> bool:
    return v is None or v is REQUIRED or v == ""


def _default(a: argparse.Action, command: str) -> object:
    """What the option defaults to: the declaration's value (for flags layered over a config
    file, whose parser default is None), else the parser's."""
    opt: Opt | None = getattr(a, "slidr_opt", None)
    if opt is not None:
        return opt.default_for(command)
    return None if a.required else a.default


def _kind(a: argparse.Action) -> str:
    if a.nargs == 0:
        return "switch"
    opt: Opt | None = getattr(a, "slidr_opt", None)
    if opt is not None:
        t = opt.type
    else:
        t = a.type or str
    name = getattr(t, "__name__", str(t))
    return "str" if name == "Path" else name  # a path is text on the command line


def test_every_leaf_has_the_common_switches():
    long = set(LONG_RUNNING)
    for leaf in _leaves():
        flags = {s for a in leaf._actions for s in a.option_strings}
        cmd = _command(leaf)
        for f in ("--json", "--quiet", "--debug", "--version"):
            assert f in flags, f"{leaf.prog} has no {f}"
        if cmd in long:
            assert "--progress" in flags, f"{leaf.prog} can run long but has no --progress"


def test_both_programs_have_version(capsys):
    for build, name in ((slidr_parser, "slidr"), (slidrd_parser, "slidrd")):
        with pytest.raises(SystemExit) as e:
            build().parse_args(["--version"])
        assert e.value.code == 0
        out = capsys.readouterr().out
        assert re.match(rf"{name} \d+\.\d+\.\d+ \(Python ", out), out
    # and on every command, before anything it requires
    for argv, name in ((["train", "--version"], "slidr"), (["models", "list", "--version"],
                       "slidr"), (["serve", "--version"], "slidrd")):
        build = slidrd_parser if name == "slidrd" else slidr_parser
        with pytest.raises(SystemExit) as e:
            build().parse_args(argv)
        assert e.value.code == 0
        assert capsys.readouterr().out.startswith(f"{name} "), argv


def test_every_option_has_help_showing_its_default():
    problems = []
    for leaf in _leaves():
        text = leaf.format_help()
        one_of = {id(a) for g in leaf._mutually_exclusive_groups if g.required
                  for a in g._group_actions}
        for a in leaf._actions:
            if isinstance(a, argparse._HelpAction | argparse._VersionAction):
                continue
            name = "/".join(a.option_strings) or a.dest
            if not (a.help and a.help != argparse.SUPPRESS and len(a.help) > 8):
                problems.append(f"{leaf.prog} {name}: no help")
            if not a.option_strings or a.required or a.nargs == 0 or id(a) in one_of:
                continue
            # The formatted help of this option (up to the next option) names its default.
            flag = a.option_strings[-1]
            m = re.search(rf"^  {re.escape(flag)}\b.*?(?=^  -|\Z)", text, re.S | re.M)
            if not (m and "default" in m.group(0)):
                problems.append(f"{leaf.prog} {flag}: default not shown")
    assert not problems, "\n".join(problems)


def test_numbers_are_shown_as_n_or_x():
    """A valued flag's metavar says what it takes (N, X, PATH, ...), never its dest in capitals."""
    bad = [f"{leaf.prog} {a.option_strings[-1]}" for leaf in _leaves() for a in _options(leaf)
           if a.nargs != 0 and not a.choices
           and (a.metavar is None or (a.metavar == a.dest.upper() and len(a.dest) > 1))
           and getattr(a.type, "__name__", "") in ("int", "float")]
    assert not bad, bad


def test_an_optional_flag_never_claims_to_be_required():
    """A flag a command makes optional (one of a group, or needed only in some uses) says when
    it is needed instead of showing the declaration's "default: required"."""
    bad = []
    for leaf in _leaves():
        text = leaf.format_help()
        for m in re.finditer(r"^  (--\S+).*?(?=^  -|\Z)", text, re.S | re.M):
            if "default: required" in " ".join(m.group(0).split()):
                bad.append(f"{leaf.prog} {m.group(1)}")
    assert not bad, bad


def test_one_name_one_meaning_one_default():
    by_flag: dict[str, list[tuple[str, argparse.Action]]] = {}
    by_dest: dict[str, set[str]] = {}
    for leaf in _leaves():
        cmd = _command(leaf)
        for a in _options(leaf):
            for f in a.option_strings:
                assert f not in RETIRED, f"{leaf.prog}: {f} is now {RETIRED[f]}"
                by_flag.setdefault(f, []).append((cmd, a))
            by_dest.setdefault(a.dest, set()).add(a.option_strings[-1])
    problems = []
    for dest, flags in by_dest.items():
        if len(flags) > 1:
            problems.append(f"one setting '{dest}' has several flags: {sorted(flags)}")
    shared_flags = {o.flag: o for o in defaults.SHARED.values()}
    for flag, uses in by_flag.items():
        kinds = {(_kind(a)) for _c, a in uses}
        if len(kinds) > 1:
            problems.append(f"{flag} has different types: " + ", ".join(
                f"{c}={_kind(a)}" for c, a in uses))
        # A flag that a shared declaration names must come from that declaration.
        if flag in shared_flags:
            for c, a in uses:
                opt = getattr(a, "slidr_opt", None)
                if opt is None or opt.name != shared_flags[flag].name:
                    problems.append(f"{c} {flag} is not added from slidr.defaults.SHARED")
        if len(uses) < 2:
            continue
        values = {}
        for c, a in uses:
            d = _default(a, c)
            values[c] = None if _no_default(d) else format_value(d)
        if len(set(values.values())) > 1:
            # Differences are allowed only where the declaration lists them (per_command).
            opt = next((getattr(a, "slidr_opt", None) for _c, a in uses
                        if getattr(a, "slidr_opt", None) is not None), None)
            declared = set(opt.per_command) if opt is not None else set()
            base = {v for c, v in values.items() if c not in declared}
            if len(base) > 1:
                problems.append(f"{flag} defaults differ: {values}")
    assert not problems, "\n".join(problems)


def test_parser_defaults_equal_the_declarations():
    """A flag's parser default is its declaration's (or None where a config file layers)."""
    for leaf in _leaves():
        cmd = _command(leaf)
        for a in _options(leaf):
            opt = getattr(a, "slidr_opt", None)
            if opt is None or a.required:
                continue
            want = opt.default_for(cmd)
            if a.default is None or (a.nargs == 0 and a.default is False):
                continue
            if cmd == "admin":  # $SLIDRD_ADMIN_SOCKET may move it; the declared one shows
                continue
            assert a.default == want, f"{leaf.prog} {a.option_strings[-1]}: parser default " \
                                      f"{a.default!r} != declared {want!r}"


# ---------------------------------------------------------------- config loaders, docs

def _configs():
    from slidr.offline import calibrate, daily, guardrails, pipeline, simulate
    return [calibrate.CalibConfig, guardrails.GuardrailConfig, daily.DailyConfig,
            pipeline.TrainConfig, simulate.SimParams, daemon_config.Config]


def test_config_dataclasses_take_their_defaults_from_the_declarations():
    declared = {**defaults.SHARED}
    for cls in _configs():
        inst = cls()
        # A field named like a shared option is that option: declared, not a literal default.
        for f in dataclasses.fields(cls):
            if f.name in declared and f.name not in defaults.GLOBAL \
                    and cls is not daemon_config.Config:
                assert "opt" in f.metadata, f"{cls.__name__}.{f.name}: a literal default; " \
                    "use options.field_from(slidr.defaults...)"
                assert getattr(inst, f.name) == declared[f.name].default, (cls.__name__, f.name)
        opts = options_of(cls)
        assert opts, f"{cls.__name__} declares no option"
        for name, opt in opts.items():
            assert getattr(inst, name) == opt.default, (cls.__name__, name)
            if cls is daemon_config.Config:
                continue
            src = declared.get(name)
            if name == "fpr_target":
                src = declared["fpr_budget"]
            assert src is not None, f"{cls.__name__}.{name} is not declared in slidr/defaults.py"
            assert opt.default == src.default, f"{cls.__name__}.{name}: {opt.default!r} != " \
                                               f"{src.default!r} (slidr/defaults.py)"


def test_min_coverage_is_one_value_everywhere():
    from slidr.offline import calibrate, daily, guardrails
    v = defaults.SHARED["min_coverage"].default
    assert calibrate.CalibConfig().min_coverage == daily.DailyConfig().min_coverage == \
        guardrails.GuardrailConfig().min_coverage == v
    for leaf in _leaves():
        for a in _options(leaf):
            if "--min-coverage" in a.option_strings:
                assert a.default == v, leaf.prog


def _doc_table(path: Path, block: str) -> dict[str, str]:
    """{flag: default column} of a generated table in the docs."""
    text = path.read_text()
    m = re.search(rf"<!-- generated: {block} .*?-->\n(.*?)<!-- end: {block} -->", text, re.S)
    assert m, f"{path}: no generated block {block}"
    rows = {}
    for line in m.group(1).splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0].startswith("`--"):
            rows[cells[0].strip("`")] = cells[2]
    return rows


def test_defaults_agree_between_loader_flags_and_docs():
    """#17's check: the daemon's config loader (TOML with no keys), its flags' shown default
    and docs/daemon.md agree on every option's default; the same for the shared slidr options
    and docs/cli.md."""
    docs = _doc_table(REPO / "docs" / "daemon.md", "daemon-options")
    loaded = daemon_config.build({"registry": str(REPO)}, {}, file_name="t.toml").as_dict()
    serve = next(p for p in leaves(slidrd_parser()) if p.prog == "slidrd serve")
    shown = {a.option_strings[-1]: getattr(a, "slidr_shown_default", None)
             for a in _options(serve)}
    for name, opt in daemon_config.OPTIONS.items():
        want = format_value(opt.default)
        if name != "registry":
            assert format_value(loaded[name]) == want, f"loader: {name}"
        assert shown[opt.flag] == want, f"slidrd serve {opt.flag} shows {shown[opt.flag]}"
        assert docs.get(opt.flag, "").startswith(f"`{want}`"), \
            f"docs/daemon.md: {opt.flag} default {docs.get(opt.flag)!r} != {want!r}"
    docs = _doc_table(REPO / "docs" / "cli.md", "shared-options")
    for opt in defaults.SHARED.values():
        want = opt.shown_default() if opt.default_text else f"`{opt.shown_default()}`"
        assert docs.get(opt.flag, "").startswith(want), f"docs/cli.md: {opt.flag}"


def test_generated_docs_are_up_to_date():
    assert docgen.stale() == [], "run `python -m slidr.docgen`"


def test_declarations_are_sane():
    for opt in [*defaults.SHARED.values(), *daemon_config.OPTIONS.values()]:
        assert len(opt.help) > 8, opt.name
        if opt.default is not REQUIRED and opt.default is not None and opt.type in (int, float):
            # the default itself is in range
            from slidr.options import check_value
            check_value(opt, opt.default, "declaration")
        if opt.choices and opt.default is not REQUIRED:
            assert opt.default in opt.choices, opt.name
    assert dataclasses.is_dataclass(daemon_config.Config)
