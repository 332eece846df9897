"""Child processes that die with the process that started them (Linux), so that a killed run leaves none behind."""
from __future__ import annotations

import os
import signal
import sys

__all__ = ["stop_with_parent"]


def stop_with_parent(parent: int):
    """A ``preexec_fn`` for the steps' commands: the child gets SIGKILL when ``parent`` (the demo) dies
    (``prctl(PR_SET_PDEATHSIG)``, Linux), so that a ``kill -9`` of the demo alone does not leave its step running
    beside the re-run that continues it (two trainings writing one fold); None where that is not available (kill
    the demo's process group there)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def preexec() -> None:
        prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the demo died before prctl took effect
            os.kill(os.getpid(), signal.SIGKILL)
    return preexec
