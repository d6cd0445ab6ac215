"""Fault tests' long form: three clustered NATS servers with R3 streams, every service killed several times
(also at its named failpoints), one NATS server and PostgreSQL killed, under steady callback and case load.

Runs tests/faults/test_faults.py's long form through pytest (its fixtures, timeouts and supervisor) and
prints its figures; `--quick` runs the short form instead; `--no-report` leaves docs/benchmarks.md alone.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile

from bench.support import REPO, append_report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="the short form (as in ./dev test)")
    parser.add_argument("--no-report", action="store_true", help="do not append to docs/benchmarks.md")
    args = parser.parse_args()
    test = "test_short_form" if args.quick else "test_long_form"
    env = {**os.environ, "ABONENT_FAULTS_LONG": "1"}
    tmp = tempfile.mkdtemp(prefix="abonent-faults-")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/faults/test_faults.py", "-k", test, "-s", "-q",
         "-p", "no:cacheprovider", f"--basetemp={tmp}/pytest"],
        cwd=REPO, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode == 0:
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        print(f"logs of every process kept in {tmp}", file=sys.stderr)
    lines = [line for line in done.stdout.splitlines() if line.startswith("faults ")]
    print("\n".join(lines) or done.stdout[-6000:])
    if done.returncode != 0:
        print(done.stdout[-6000:], done.stderr[-3000:], sep="\n", file=sys.stderr)
        return done.returncode
    if not args.no_report:
        form = "short" if args.quick else "long"
        append_report(f"Fault tests ({form} form)", "\n".join(f"    {line}" for line in lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
