"""Named crash points for fault tests: ABONENT_FAILPOINTS=relay.after_publish kills the process there.

Tests use them to SIGKILL a real process at an exact step (the technique of FoundationDB and TiKV), instead
of patching code. In production the variable is unset and a failpoint is a dict lookup.
"""

from __future__ import annotations

import os
import signal

_ACTIVE = frozenset(filter(None, os.environ.get("ABONENT_FAILPOINTS", "").split(",")))


def failpoint(name: str) -> None:
    if name in _ACTIVE:
        os.kill(os.getpid(), signal.SIGKILL)
