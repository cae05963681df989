"""Run a command as a child subreaper and report every process it left behind.

    python tests/benchmarks/reaper.py [--signal-on REGEX] [--signal INT|TERM] [--timeout S] -- CMD ...

This process becomes a child subreaper (``prctl(PR_SET_CHILD_SUBREAPER)``), so every descendant of CMD stays in
its tree even when its parent dies or it starts a session of its own (Ray, LitServe's workers, uvicorn's). When
CMD's output prints a line matching ``--signal-on``, CMD (that process alone, not its group: the hard case) gets
the signal. After CMD exits and a grace period, whatever is still alive below this process is a leftover: it is
reported, then killed. The last line printed is JSON: ``{"returncode", "signalled", "leftovers", "output"}``.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import psutil

PR_SET_CHILD_SUBREAPER = 36


def living_descendants() -> list[psutil.Process]:
    while True:  # reap the orphans that were handed to us and have exited
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
    alive = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                alive.append(child)
        except psutil.NoSuchProcess:
            pass
    return alive


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--signal-on", default=None, help="send --signal to CMD when its output matches this regex")
    parser.add_argument("--signal", default="INT", choices=["INT", "TERM"], help="the signal (default INT)")
    parser.add_argument("--timeout", type=float, default=300, help="kill CMD after this many seconds (default 300)")
    parser.add_argument("--grace", type=float, default=5, help="seconds its processes get to exit after it (default 5)")
    parser.add_argument("cmd", nargs=argparse.REMAINDER, help="the command, after --")
    args = parser.parse_args()
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")

    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    lines: list[str] = []
    signalled = threading.Event()
    pattern = re.compile(args.signal_on) if args.signal_on else None

    def read() -> None:
        for line in proc.stdout:
            lines.append(line)
            if pattern and not signalled.is_set() and pattern.search(line):
                signalled.set()
                os.kill(proc.pid, getattr(signal, "SIG" + args.signal))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        returncode = proc.wait(timeout=args.timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        returncode = proc.wait()
    reader.join(timeout=10)
    deadline = time.monotonic() + args.grace
    leftovers = living_descendants()
    while leftovers and time.monotonic() < deadline:
        time.sleep(0.2)
        leftovers = living_descendants()
    report = []
    for child in leftovers:
        try:
            report.append({"pid": child.pid, "cmdline": " ".join(child.cmdline())[:300]})
            child.kill()
        except psutil.NoSuchProcess:
            pass
    time.sleep(0.2)
    living_descendants()  # reap what was killed
    print(json.dumps({"returncode": returncode, "signalled": signalled.is_set(), "leftovers": report,
                      "output": "".join(lines)[-6000:]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
