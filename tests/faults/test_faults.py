"""Nothing lost, nothing twice: the whole system under load while its processes are killed in turn.

The short form runs in `./dev test`; the long form (three clustered NATS servers with R3 streams, more
kills, longer load) runs with ABONENT_FAULTS_LONG=1 or from `bench/faults.py`.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from faults.chaos import LONG, SHORT, Form, report, run_faults

pytestmark = pytest.mark.slow


async def _run(form: Form, tmp_path: Path) -> None:
    findings, run, ledger = await run_faults(form, tmp_path)
    print("\n" + report(findings, run, ledger))
    assert findings.accepted > 0
    assert not findings.lost, findings.lost[:5]
    assert not findings.stuck, findings.stuck[:5]
    assert not findings.double_dials, findings.double_dials[:5]
    assert not findings.double_calls, findings.double_calls[:5]
    assert not findings.double_messages, findings.double_messages[:5]
    assert not findings.undelivered_events, findings.undelivered_events[:5]
    assert not findings.unpublished
    assert not findings.dead_letters
    assert not ledger.replay_mismatches, ledger.replay_mismatches[:5]
    assert not ledger.server_errors, ledger.server_errors
    assert all(run.not_ready_seen.values()), run.not_ready_seen
    assert not run.restarted_during_outage, run.restarted_during_outage


@pytest.mark.timeout(1500)
async def test_short_form_loses_nothing_and_repeats_nothing(tmp_path: Path) -> None:
    await _run(SHORT, tmp_path)


@pytest.mark.skipif(not os.environ.get("ABONENT_FAULTS_LONG"), reason="long form: ABONENT_FAULTS_LONG=1")
@pytest.mark.timeout(2400)
async def test_long_form_loses_nothing_and_repeats_nothing(tmp_path: Path) -> None:
    await _run(LONG, tmp_path)
