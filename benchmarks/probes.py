"""What a benchmark run measures besides its clock, so that the report can say *why* a
target is not met, from figures of the same run.

`ClientProbe` watches a service stream's client from inside the writer process: garbage
collection pauses, waits for a free ring slot (the daemon behind), the release pump and
the liveness check; it attributes each slow append() to what overlapped it. `SystemProbe`
reads the VM's CPU steal and the daemon's CPU by thread kind from /proc around a run.
"""

from __future__ import annotations

import gc
import os
import resource
import time
from pathlib import Path

import numpy as np

#: an event shorter than this is counted, not kept as an interval
KEEP_NS = 50_000


class ClientProbe:
    """Wraps a `ServiceStream`'s slow-path methods (instance attributes: the class and the
    product are untouched) and listens to the garbage collector."""

    KINDS = ("gc", "slot wait", "pump", "liveness")

    def __init__(self, stream) -> None:
        self.intervals: list[tuple[int, int, str]] = []
        self.totals = {k: [0, 0, 0] for k in self.KINDS}  # count, total ns, max ns
        self.ring_full = 0  # slot waits that found no slot free at all
        self._gc_start = 0
        self._stream = stream
        clock = time.perf_counter_ns
        self._clock = clock
        for name, kind in (("_wait_for_slot", "slot wait"), ("_pump", "pump"),
                           ("_check_daemon_alive", "liveness")):
            setattr(stream, name, self._wrap(getattr(stream, name), kind))
        other = stream._other_slot
        self.out_of_order = 0  # frames put in another slot than the one they preferred

        def other_slot():
            preferred = stream._next_slot
            slot = other()
            self.out_of_order += slot >= 0 and slot != preferred
            return slot
        stream._other_slot = other_slot
        gc.callbacks.append(self._on_gc)
        ru = resource.getrusage(resource.RUSAGE_SELF)
        self._ru0 = (ru.ru_nivcsw, ru.ru_minflt)

    def _wrap(self, fn, kind):
        clock, note, stream = self._clock, self._note, self._stream

        def wrapped(*a, **k):
            if kind == "slot wait" and not stream._nfree:
                self.ring_full += 1
            t0 = clock()
            try:
                return fn(*a, **k)
            finally:
                note(kind, t0, clock())
        return wrapped

    def _note(self, kind: str, t0: int, t1: int) -> None:
        tot = self.totals[kind]
        d = t1 - t0
        tot[0] += 1
        tot[1] += d
        if d > tot[2]:
            tot[2] = d
        if d >= KEEP_NS:
            self.intervals.append((t0, t1, kind))

    def _on_gc(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._gc_start = self._clock()
        else:
            self._note("gc", self._gc_start, self._clock())

    def stop(self) -> None:
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
        ru = resource.getrusage(resource.RUSAGE_SELF)
        self._ru1 = (ru.ru_nivcsw, ru.ru_minflt)

    def summary(self, starts: np.ndarray, lat: np.ndarray, slow_ns: int) -> dict:
        """Counts and times of each kind, and the appends slower than ``slow_ns`` (and the
        slowest 1 %) by what took most of their time (`_cause`); "none" left: the process
        was descheduled or the copy itself was slow (involuntary context switches say how
        often the process was descheduled)."""
        self.stop()
        out = {k: {"count": c, "total_ms": t / 1e6, "max_us": m / 1e3}
               for k, (c, t, m) in self.totals.items()}
        out["ring_full_waits"] = self.ring_full
        out["out_of_order_slots"] = self.out_of_order
        out["involuntary_switches"] = self._ru1[0] - self._ru0[0]
        out["minor_faults"] = self._ru1[1] - self._ru0[1]
        top = max(1, len(lat) // 100)
        worst = np.argsort(lat)[-top:]
        out["slow_appends"] = self._attribute(starts, lat, np.flatnonzero(lat > slow_ns))
        out["p99_appends"] = self._attribute(starts, lat, worst)
        out["slowest_append_cause"] = self._cause(int(starts[worst[-1]]),
                                                  int(starts[worst[-1]] + lat[worst[-1]]))
        return out

    def _cause(self, t0: int, t1: int) -> str:
        """The kind of event that covered most of [t0, t1), if it covered at least half:
        else "none" (none of our slow paths explains the call)."""
        cover: dict[str, int] = {}
        for a, b, k in self.intervals:
            if a < t1 and b > t0:
                cover[k] = cover.get(k, 0) + min(b, t1) - max(a, t0)
        if cover:
            kind = max(cover, key=cover.get)
            if cover[kind] * 2 >= t1 - t0:
                return kind
        return "none"

    def _attribute(self, starts, lat, which) -> dict:
        counts = {k: 0 for k in (*self.KINDS, "none")}
        for i in which:
            counts[self._cause(int(starts[i]), int(starts[i] + lat[i]))] += 1
        return {"count": int(len(which)), "by_cause": counts}


def _cpu_fields() -> list[int]:
    return [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]


class SystemProbe:
    """The machine's CPU time split (busy, idle, iowait, steal), the daemon's CPU and its
    CPU by thread kind (threads that ended meanwhile are not in the split), between start()
    and stop(). Steal is CPU time the VM's host gave to others:
    the VM's own noise, measured."""

    def __init__(self, daemon_pid: int | None = None) -> None:
        self.pid = daemon_pid

    def _process(self) -> float:
        """The daemon's CPU time (user + system) so far, every thread, ended ones too."""
        if self.pid is None:
            return 0.0
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def _threads(self) -> dict[str, float]:
        out: dict[str, float] = {}
        if self.pid is None:
            return out
        tck = os.sysconf("SC_CLK_TCK")
        for task in Path(f"/proc/{self.pid}/task").iterdir():
            try:
                name = (task / "comm").read_text().strip()
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # a thread that ended meanwhile
            kind = "tensorstore" if name.startswith("ts_") else \
                "zeromq" if name.startswith("ZMQ") else "python"
            out[kind] = out.get(kind, 0.0) + (int(fields[11]) + int(fields[12])) / tck
        return out

    def start(self) -> None:
        self._t0, self._cpu0, self._th0 = time.monotonic(), _cpu_fields(), self._threads()
        self._proc0 = self._process()

    def stop(self) -> dict:
        wall = time.monotonic() - self._t0
        d = [b - a for a, b in zip(self._cpu0, _cpu_fields())]
        total = sum(d[:8]) or 1  # user nice system idle iowait irq softirq steal
        th1 = self._threads()
        return {"steal": d[7] / total, "iowait": d[4] / total, "idle": d[3] / total,
                "busy": (total - d[3] - d[4] - d[7]) / total, "wall_s": wall,
                "daemon_cpu_s": self._process() - self._proc0,
                "daemon_threads_cpu_s": {k: v - self._th0.get(k, 0.0) for k, v in th1.items()}}
