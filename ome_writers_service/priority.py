"""The writer daemon's CPU priority: below the acquisition program's, so that on a busy PC the
camera loop wins the cores and the daemon, which has a ring of slack, catches up after.

POSIX only (a nice value). Elsewhere (Windows) this is a no-op that says so; a priority class
belongs behind the platform layer once there is one.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

#: the range of nice values: 0 is the default priority, 19 the lowest
NICE_RANGE = (0, 19)


def set_nice(nice: int) -> int | None:
    """Give this process (every thread it has, and those it starts later) ``nice``; returns
    the nice value it runs at, or None where nice values do not exist. Going below the
    current value (raising the priority) needs privileges: it is logged and left as it is."""
    low, high = NICE_RANGE
    if not low <= nice <= high:
        raise ValueError(f"nice {nice} is out of range: use {low} (normal) to {high} (lowest)")
    if not hasattr(os, "setpriority"):
        log.info("nice %d ignored: this platform has no nice values", nice)
        return None
    current = os.getpriority(os.PRIO_PROCESS, 0)
    if nice < current:
        log.warning("nice %d ignored: the daemon already runs at nice %d and raising the "
                    "priority needs privileges", nice, current)
        return current
    # Linux keeps a nice value per thread: set it on each (new threads inherit the caller's)
    tasks = [int(t) for t in os.listdir("/proc/self/task")] if os.path.isdir("/proc/self/task") \
        else [0]
    for tid in tasks:
        try:
            os.setpriority(os.PRIO_PROCESS, tid, nice)
        except ProcessLookupError:  # a thread that ended meanwhile
            pass
    return os.getpriority(os.PRIO_PROCESS, 0)
