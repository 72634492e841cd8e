"""Soak: the reliability suite (tests/reliability) as one command, and its one table.

    python -m bench.soak [--full] [-k EXPR] [--json FILE]

Runs ``pytest tests/reliability`` in quick mode (what ``.ci/run`` runs inside the whole
suite: bounded, a few minutes) or, with ``--full``, at the issue's sizes (SIGKILL of
``kiln serve`` five times in a 1,000-task batch on SQLite and PostgreSQL, 100k-row
files, the long schemathesis runs). It prints the suite's table: faults injected,
crashes survived, inputs tried, then 5xx, lost and duplicated tasks and ledger drift,
which must all be 0; the exit status is pytest's. The throughput of each crash run
against an undisturbed run of the same batch, measured by the same server in the same
session (tests/reliability/test_crash_serve.py), is printed by the test and gathered
again under the table as a ratio (1.00: the crashes cost nothing).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument("--full", action="store_true", help="the issue's full sizes")
    parser.add_argument("-k", dest="select", help="only the tests pytest's -k selects")
    parser.add_argument("--json", type=Path, help="also write the table's figures here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        report = args.json or Path(scratch) / "soak.json"
        env = {
            **os.environ,
            "KILN_SOAK": "full" if args.full else "quick",
            "KILN_SOAK_REPORT": str(report),
        }
        env.pop("KILN_TEST_DATABASE", None)  # the suite picks SQLite and PostgreSQL itself
        command = [sys.executable, "-m", "pytest", "tests/reliability", "-q", "-s"]
        if args.full:
            command += ["-o", "timeout=3600"]
        if args.select:
            command += ["-k", args.select]
        status, ratios = run_and_gather(command, env)
        if ratios:
            print("\nthroughput under faults against an undisturbed run (same session):")
            for line in ratios:
                print(f"  {line}")
        if args.json and report.exists():
            print(f"\nsoak figures written to {report}")
    return status


#: what the crash tests print about their throughput (see tests/reliability)
RATIO = "throughput ratio"


def run_and_gather(command: list[str], env: dict[str, str]) -> tuple[int, list[str]]:
    """Run pytest, its output passed through as it comes; its exit status, and the lines
    that give a throughput ratio."""
    gathered: list[str] = []
    with subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            if RATIO in line:
                gathered.append(line.strip())
    return process.returncode, gathered


if __name__ == "__main__":
    raise SystemExit(main())
