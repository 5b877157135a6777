"""Why a target was not met, from figures of the same run (`probes`), and what a machine
with more cores would change, derived from them. Each function returns (short, reason,
cores): a few words for the targets table, the figures, and the more-cores line.

The figures, all medians over the repeats of the run in question:
* the daemon's CPU ÷ wall and CPU seconds per GB (client + daemon): the work per byte. On
  this 2-vCPU VM a writer at X GB/s needs X × (CPU s per GB) cores; more than the cores
  free means CPU-bound, whatever the disk could do.
* the daemon's writer thread: its own CPU ÷ wall (near 1: that one thread, and the GIL it
  holds, is the limit), the share of the wall it spent in the backend's write calls, waiting
  for writes in flight (zarr: the disk or tensorstore's threads behind), idle waiting for
  frames (the client was the limit), and its slowest single write.
* the machine: busy share of both vCPUs (others' load included) and steal (the host's).
* the client: waits for a free slot (ring full: the writer behind), the backlog at the last
  frame, and each slow append() attributed to what overlapped it: a garbage collection, a
  slot wait, the release pump, the liveness check, or none of ours (descheduled: the
  involuntary context switches count those).
"""

from __future__ import annotations

import math
import statistics

from report import med, values  # (report imports this module inside targets())


def _m(runs, get) -> float:
    v = med(runs, get)
    return 0.0 if v is None else v


def _gb(r: dict) -> float:
    return r["bytes"] / 1e9


def _cpu_per_gb(r: dict) -> float:
    return (r["cpu_s"] + r.get("daemon_cpu_s", 0.0)) / _gb(r)


def _share(key: str):
    return lambda r: r["timings"][key] / r["close_s"]


def _machine(runs) -> str:
    busy = _m(runs, lambda r: r["system"]["busy"])
    steal = _m(runs, lambda r: r["system"]["steal"])
    ours = _m(runs, lambda r: (r["cpu_s"] + r.get("daemon_cpu_s", 0)) / r["close_s"])
    return (f"both vCPUs {busy:.0%} busy, {ours:.2f} cores of it ours (client + daemon), the "
            f"rest others' load; steal {steal:.1%}")


def throughput(runs: list[dict], raw: list[dict], floor: float | None = None,
               fps_target: float | None = None) -> tuple[str, str, str]:
    """A writer slower than its target: CPU-bound (its work per GB against the cores), its
    writer thread the limit, the disk (waits on writes), or the client (writer idle)."""
    if not values(runs, _cpu_per_gb):
        return "—", "no run with figures", ""
    cpu_gb = _m(runs, _cpu_per_gb)
    client_gb = _m(runs, lambda r: r["cpu_s"] / _gb(r))
    cores = _m(runs, lambda r: r["daemon_cpu_s"] / r["close_s"])
    worker = _m(runs, lambda r: r["timings"]["worker_cpu_s"] / r["close_s"])
    in_write = _m(runs, _share("write_s"))
    idle = _m(runs, _share("idle_s"))
    waits = values(runs, _share("write_wait_s"))
    ts = _m(runs, lambda r: r["system"]["daemon_threads_cpu_s"].get("tensorstore", 0) / _gb(r))
    copied = values(runs, lambda r: r["timings"]["frames_copied"] / r["frames"])
    slot = _m(runs, lambda r: r["client_probe"]["slot wait"]["total_ms"] / 1e3 / r["close_s"])
    raw_gbs = (statistics.median(values(raw, lambda r: r["bytes"] / r["close_s"] / 1e9))
               if values(raw, lambda r: r["close_s"]) else 0.0)
    ours_gbs = _m(runs, lambda r: r["bytes"] / r["close_s"] / 1e9)
    raw_gb = _m(raw, _cpu_per_gb)
    parts = [f"CPU {cpu_gb:.2f} s/GB (client {client_gb:.2f}, daemon {cpu_gb - client_gb:.2f}"
             f"{f', of it tensorstore threads {ts:.2f}' if ts else ''}; raw disk {raw_gb:.2f})",
             f"daemon {cores:.2f} cores busy, its writer thread {worker:.2f} (in writes "
             f"{in_write:.0%}{f', waiting on writes in flight {statistics.median(waits):.0%} (in writes and finalize)' if waits else ''}"
             f", idle {idle:.0%} of the wall)",
             f"client waited for a free slot {slot:.0%} of the wall",
             _machine(runs)]
    if copied:
        parts.insert(2, f"frames copied into chunk buffers {statistics.median(copied):.0%}")
    need_gbs = floor * raw_gbs if floor else (fps_target or 0) * _m(runs, lambda r: r["bytes"]
                                                                     / r["frames"]) / 1e9
    need = need_gbs * cpu_gb
    # what bounds it: the writer thread near a full core, or the machine's two cores
    busy = _m(runs, lambda r: r["system"]["busy"])
    ours = _m(runs, lambda r: (r["cpu_s"] + r.get("daemon_cpu_s", 0)) / r["close_s"])
    if busy >= 0.95 and ours < 1.5:
        short = f"CPU-starved: got {ours:.2f} of 2 cores"
        bound = (f"starved of CPU: both vCPUs were {busy:.0%} busy and client + daemon got "
                 f"{ours:.2f} cores of them (the rest: others' load), while the work needs "
                 f"{need:.1f} cores at the target")
    elif worker >= 0.8:
        short = f"writer thread bound ({worker:.2f} core)"
        bound = (f"bound by the daemon's writer thread ({worker:.2f} of a core): more cores "
                 "help only once its per-frame work moves to other threads")
    elif idle >= 0.4 and slot < 0.1:
        short = "client-bound (daemon idle)"
        bound = "the daemon was idle: the client (one Python thread) was the limit"
    else:
        short = f"CPU-bound: needs {need:.1f} cores"
        bound = (f"CPU-bound: {need_gbs:.2f} GB/s × {cpu_gb:.2f} CPU s/GB = {need:.1f} cores "
                 f"needed; this VM has 2, shared with the others' load")
    cores_line = (f"{bound}. At {need_gbs:.2f} GB/s the work needs {need:.1f} cores (we do "
                  f"{ours_gbs:.2f} GB/s now); a machine with ≥ {max(2, int(need + 1.99))} free "
                  "cores and the same disk should meet it if the disk is not the limit "
                  f"(raw disk here {raw_gbs:.2f} GB/s)")
    return short, "; ".join(parts), cores_line


def lateness(runs: list[dict], base: list[dict], rate_hz: float) -> tuple[str, str, str]:
    """A camera loop later than the memcpy baseline: did appends wait for slots (the ring
    full: the writer behind), how far behind was the daemon, how slow was its slowest
    write, and how busy was the machine."""
    if not values(runs, lambda r: r["client_probe"]["slot wait"]["count"]):
        return "—", "no run with figures", ""
    full = _m(runs, lambda r: r["client_probe"]["ring_full_waits"])
    waited = _m(runs, lambda r: r["client_probe"]["slot wait"]["total_ms"])
    wmax = _m(runs, lambda r: r["client_probe"]["slot wait"]["max_us"] / 1e3)
    backlog = _m(runs, lambda r: r["backlog"])
    slowest = _m(runs, lambda r: r["timings"]["slowest_write_s"] * 1e3)
    cpu_gb = _m(runs, lambda r: r.get("daemon_cpu_s", 0) / _gb(r))
    gbs = _m(runs, lambda r: r["bytes"] / r["frames"]) * rate_hz / 1e9
    slow = _m(runs, lambda r: r["client_probe"]["slow_appends"]["count"])
    in_write = _m(runs, _share("write_s"))
    on_cpu = _m(runs, lambda r: r["timings"]["worker_cpu_s"] / r["timings"]["write_s"])
    base_spread = _spread(values(base, lambda r: r["lateness_us"]["p99"]))
    reason = (f"ring-full waits {full:.0f} per run (slot waits {waited:,.1f} ms in all, longest "
              f"{wmax:,.1f} ms), backlog at the last frame {backlog:.0f} frames; the daemon's "
              f"writer thread was in its write calls {in_write:.0%} of the wall and had a CPU "
              f"for {min(on_cpu, 1):.0%} of that time (the rest: waiting for a CPU or in the "
              f"kernel), slowest single write {slowest:,.1f} ms; appends > 1 ms {slow:.0f}; "
              f"{_machine(runs)}; baseline p99 spread {base_spread:.0%} (the VM's noise)")
    need = gbs * cpu_gb
    frame = _m(runs, lambda r: r["bytes"] / r["frames"])
    span = min(4096, max(8, RING_BYTES // frame)) / rate_hz * 1e3 if frame else 0.0
    one_at_a_time = not values(runs, lambda r: r["timings"]["write_wait_s"])  # OME-TIFF
    if full > 0:
        short = f"writer behind: ring full {full:.0f}×"
        cores = (f"the writer fell behind (the ring filled): at {gbs:.2f} GB/s the daemon needs "
                 f"{need:.2f} cores ({cpu_gb:.2f} CPU s/GB), which it did not get beside the "
                 f"producer and the others' load; with {math.ceil(need)} core(s) of its own "
                 f"(≥ {math.ceil(need) + 1} in all, one for the producer) and a "
                 f"slowest write ({slowest:,.0f} ms here) shorter than the ring's span "
                 f"({span:,.0f} ms of frames) it would not block the camera")
        if one_at_a_time and in_write > 0.5:
            cores += (f". This writer writes one page at a time on its one thread ({in_write:.0%} "
                      "of the wall in writes, mostly off the CPU): a write that waits for the "
                      "CPU or the kernel holds up every frame behind it, where OME-Zarr keeps "
                      "several writes in flight on tensorstore's threads")
    else:
        short = "producer descheduled (ring never full)"
        cores = ("the ring never filled: the lateness is the producer's own scheduling "
                 "(descheduled between frames); a core left to the producer removes it")
    return short, reason, cores


#: the service's default ring (daemon.RING_BYTES)
RING_BYTES = 256 * 2**20


def client_tail(runs: list[dict], what: str = "append", tail: str = "p99"
                ) -> tuple[str, str, str]:
    """An append() (or claim()) tail: which of our client's slow paths took most of the
    slowest 1 % of calls (``tail="p99"``) or of those over 1 ms (``"max"``), or none (the
    producer was descheduled, or the copy itself slow)."""
    probes = [r["client_probe"] for r in runs if "client_probe" in r]
    if not probes:
        return "—", "no run with figures", ""
    by: dict[str, int] = {}
    key = "p99_appends" if tail == "p99" else "slow_appends"
    for p in probes:
        for k, n in p[key]["by_cause"].items():
            by[k] = by.get(k, 0) + n
    total = sum(by.values()) or 1
    which = "the slowest 1 %" if tail == "p99" else f"the {total / len(probes):,.0f} per run over 1 ms"
    causes = ", ".join(f"{k} {n / total:.0%}" for k, n in sorted(by.items(), key=lambda x: -x[1])
                       if n)
    slowest = {}
    for p in probes:
        slowest[p["slowest_append_cause"]] = slowest.get(p["slowest_append_cause"], 0) + 1
    worst = ", ".join(f"{k} in {n} run(s)" for k, n in slowest.items())
    pump = statistics.median(p["pump"]["max_us"] for p in probes)
    gc = statistics.median(p["gc"]["max_us"] for p in probes)
    live = statistics.median(p["liveness"]["max_us"] for p in probes)
    switches = statistics.median(p["involuntary_switches"] for p in probes)
    reason = (f"{which} of {what}s, by what took most of each: {causes}; the slowest one: "
              f"{worst}; "
              f"longest pump {pump:,.0f} µs, GC pause {gc:,.0f} µs, liveness check "
              f"{live:,.0f} µs; {switches:,.0f} involuntary context switches of the producer")
    ours = by.get("pump", 0) + by.get("liveness", 0) + by.get("gc", 0)
    copy = med(runs, lambda r: r["memcpy_us"]["p50"])
    if copy:
        reason += (f"; the bare memcpy of the same frame (same process, after the run): "
                   f"median {copy:,.0f} µs, p99 {_m(runs, lambda r: r['memcpy_us']['p99']):,.0f}"
                   f" µs")
    top = max(by, key=by.get)
    label = "none of ours" if top == "none" else top
    short = f"{label}: {by[top] / total:.0%} of {which}"
    if tail == "max" and copy and copy > 500 and what == "append":
        cores = (f"the copy alone takes {copy:,.0f} µs (median) of the 1 ms here: an append() "
                 "that copies this frame cannot keep its maximum under 1 ms on this VM's memory "
                 "bandwidth; the rest "
                 "is the producer descheduled or the copy slowed beside the daemon's; more "
                 "cores do not speed one copy, claim() (zero-copy) avoids it")
    elif by.get("none", 0) >= ours:
        cores = ("none of our client's slow paths explains most of these calls: the producer "
                 "was descheduled on its pinned core (the others' load and the VM's vCPUs share "
                 "it) or the copy itself ran slow beside the daemon's copies; a core left to "
                 "the producer alone removes the first, more memory bandwidth the second")
    else:
        cores = (f"our client's own work ({top}) is most of the tail: more cores do not "
                 "change it, a cheaper one does")
    return short, reason, cores


def nice(runs_by_label: dict[str, list[dict]]) -> str:
    """What each nice level did to the camera: did the daemon fall behind (ring-full
    waits, backlog at the last frame), and how many appends were slow."""
    out, behind = [], {}
    for label, runs in runs_by_label.items():
        full = _m(runs, lambda r: r["client_probe"]["ring_full_waits"])
        backlog = _m(runs, lambda r: r["backlog"])
        slow = _m(runs, lambda r: r["client_probe"]["slow_appends"]["count"])
        behind[label] = (full, backlog)
        out.append(f"{label}: ring-full waits {full:.0f}, backlog at the last frame "
                   f"{backlog:.0f}, appends > 1 ms {slow:.0f}")
    (lo, a), (hi, b) = list(behind.items())[0], list(behind.items())[-1]
    if b[0] > a[0]:
        end = (f". At {hi} the daemon lost the core to the CPU-busy process, fell behind and "
               "filled the ring, which then blocked the camera: a lower priority helps only "
               "where a core is left for the daemon")
    elif b[1] > a[1]:
        end = (f". At {hi} the daemon was further behind at the last frame but the ring did "
               "not fill: the camera loop won the CPU, as intended, and the daemon caught up "
               "at close")
    else:
        end = ". Neither fell behind: the difference in lateness is the producer's own scheduling"
    return "; ".join(out) + end


def _spread(vals: list[float]) -> float:
    if len(vals) < 2:
        return 0.0
    m = statistics.median(vals)
    return (max(vals) - min(vals)) / m if m else 0.0
