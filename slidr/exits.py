"""Exit codes of every `slidr` and `slidrd` command: one table (docs/cli.md, "Exit codes").

Schedulers, alerting and scripts branch on these, so a code never changes meaning. Errors are
one line on stderr (`PROG: error: ...` naming the file, field or value); `--debug` adds the
traceback.
"""

from __future__ import annotations

OK = 0
FAILED = 1
USAGE = 2
REFUSED_DATA = 3
REFUSED_MODEL = 4
CHECK_FAILED = 5
INTERRUPTED = 130
PIPE_CLOSED = 141

# code -> (name, meaning, examples)
TABLE: dict[int, tuple[str, str, str]] = {
    OK: ("ok", "done", "a model published and promoted; a report written; a daemon stopped "
         "cleanly"),
    FAILED: ("failed", "an error that is not the input's fault",
             "a bug; a disk full; a daemon that cannot be reached; a load test that aborted"),
    USAGE: ("usage or bad input", "the command line, a config file or an input file is wrong",
            "an unknown flag; a value out of range; a missing, empty or unreadable file; a "
            "config key of the wrong type; an unknown model version; a port already in use; an "
            "admin request the daemon refuses (nothing to roll back to)"),
    REFUSED_DATA: ("refused: data", "a data guardrail refused the input; nothing changed",
                   "`slidr daily` on a log with missing purchase hours or drifted features"),
    REFUSED_MODEL: ("refused: model", "a model guardrail refused the result; nothing changed",
                    "`slidr daily` with a degenerate candidate; `slidr calibrate`/`daily` when "
                    "the FPR budget cannot meet the coverage floors"),
    CHECK_FAILED: ("check failed", "a check the command was asked to make did not pass",
                   "`slidr models verify` (or `promote`) of a corrupt bundle; "
                   "`slidr backtest --require-win` when slice-level does not win"),
    INTERRUPTED: ("interrupted", "stopped by Ctrl-C (SIGINT); nothing half-written is left",
                  ""),
    PIPE_CLOSED: ("output closed", "the reader of stdout went away (as SIGPIPE would end it); "
                  "no message", "`slidr models list` piped into `head -1`"),
}


class CommandError(Exception):
    """An expected way for a command to end with a non-zero code and one line on stderr."""

    code = FAILED

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class BadInput(CommandError):
    code = USAGE


class CheckFailed(CommandError):
    code = CHECK_FAILED


def markdown() -> str:
    rows = ["| code | name | meaning | for example |", "|---|---|---|---|"]
    rows += [f"| {c} | {n} | {m} | {e} |" for c, (n, m, e) in TABLE.items()]
    return "\n".join(rows)
