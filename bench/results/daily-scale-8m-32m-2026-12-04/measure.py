"""Run a command, sample the resident memory of its whole process tree every 0.2 s, and give
each progress stage ("PROG: [i/n] STAGE: done in T" on stderr) its wall time and peak RSS
(the whole tree: with Spark, the JVM and its Python workers; and the command's own process).

    python measure.py OUT.json -- COMMAND ...

Writes OUT.json (stages, peak RSS, samples) and passes the command's stdout/stderr through.
Linux only (/proc)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time

DONE = re.compile(r"^(?P<prog>[\w ]+): \[\d+/\d+\] (?P<stage>.+?): done in ")


def tree_rss_kb(root: int) -> tuple[int, int]:
    """(sum of VmRSS over `root` and its descendants, VmRSS of `root` alone)."""
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(d))
    total, own, todo = 0, 0, [root]
    while todo:
        p = todo.pop()
        todo.extend(kids.get(p, []))
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        kb = int(line.split()[1])
                        total += kb
                        own = kb if p == root else own
                        break
        except OSError:
            pass
    return total, own


def load1() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def main() -> int:
    out, cmd = sys.argv[1], sys.argv[sys.argv.index("--") + 1:]
    t0 = time.time()
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, bufsize=1)
    samples: list[tuple[float, int, float, int]] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            tree, own = tree_rss_kb(proc.pid)
            samples.append((round(time.time() - t0, 2), tree, load1(), own))
            stop.wait(0.2)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    marks: list[tuple[float, str]] = []
    assert proc.stderr is not None
    for line in proc.stderr:
        sys.stderr.write(line)
        m = DONE.match(line.strip())
        if m:
            marks.append((time.time() - t0, m.group("stage")))
    rc = proc.wait()
    stop.set()
    th.join()
    end = time.time() - t0
    stages = []
    prev = 0.0
    for t, name in marks:
        sel = [s for s in samples if prev <= s[0] <= t]
        stages.append({"stage": name, "start_s": round(prev, 1), "wall_s": round(t - prev, 1),
                       "peak_rss_mib": round(max((s[1] for s in sel), default=0) / 1024),
                       "peak_rss_command_mib": round(max((s[3] for s in sel), default=0) / 1024),
                       "load1_mean": round(sum(s[2] for s in sel) / max(len(sel), 1), 2)})
        prev = t
    res = {"cmd": cmd, "rc": rc, "wall_s": round(end, 1),
           "peak_rss_mib": round(max((s[1] for s in samples), default=0) / 1024),
           "peak_rss_command_mib": round(max((s[3] for s in samples), default=0) / 1024),
           "load1_mean": round(sum(s[2] for s in samples) / max(len(samples), 1), 2),
           "stages": stages, "samples": samples}
    with open(out, "w") as f:
        json.dump(res, f)
    for s in stages:
        print(f"{s['stage']:>18}: {s['wall_s']:8.1f} s  peak {s['peak_rss_mib']:6d} MiB "
              f"(command {s['peak_rss_command_mib']} MiB)  load {s['load1_mean']:.2f}",
              file=sys.stderr)
    print(f"{'total':>18}: {res['wall_s']:8.1f} s  peak {res['peak_rss_mib']:6d} MiB "
          f"(command {res['peak_rss_command_mib']} MiB)  load {res['load1_mean']:.2f}  rc {rc}",
          file=sys.stderr)
    return rc


if __name__ == "__main__":
    sys.exit(main())
