"""Soak: the reliability suite (tests/reliability) as one command, and its one table.

    python -m bench.soak [--full] [-k EXPR] [--json FILE]

Runs ``pytest tests/reliability`` in quick mode (what ``.ci/run`` runs inside the whole
suite: bounded, a few minutes) or, with ``--full``, at the issue's sizes (SIGKILL of
``kiln serve`` five times in a 1,000-task batch on SQLite and PostgreSQL, 100k-row
files, the long schemathesis runs). It prints the suite's table: faults injected,
crashes survived, inputs tried, then 5xx, lost and duplicated tasks and ledger drift,
which must all be 0; the exit status is pytest's. The throughput of the crash runs
against an undisturbed run of the same batch (measured in the same session) is printed
by those tests themselves.
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
        status = subprocess.call(command, cwd=ROOT, env=env)
        if args.json and report.exists():
            print(f"\nsoak figures written to {report}")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
