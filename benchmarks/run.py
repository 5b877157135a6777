"""Benchmark: the service against the raw disk, tensorstore alone, ome-writers 0.3.2 and
acquire-zarr, with the targets of issue 18 marked met or not.

    python benchmarks/run.py                 # everything at full size, 5 repeats (~16 min)
    python benchmarks/run.py --scale 0.05 --repeats 1 --out /tmp/smoke   # tiny, for a check
    # issue 19's pyramid cost alone: W1 at levels=1 and levels=4, both formats, interleaved
    python benchmarks/run.py --sections throughput --workloads W1 \
        --writers "service tiff,service zarr" --repeats 6 --out /tmp/levels

Sections (``--sections``): ``throughput`` (W1-W3 through close), ``camera`` (a paced producer:
its lateness against a memcpy-only producer with the other core busy, and with producer and
daemon pinned to separate cores), ``nice`` (the daemon at a lower CPU priority on a busy
machine), ``compression`` (against acquire-zarr, same codec and level), ``memory`` (the
daemon's peak at 1x and 4x the frames).

Every writer runs in a fresh child process; the daemons run for the whole benchmark (the
memory section starts one per run) and their resident size is sampled during each run.
Writers are interleaved within each repeat so that drifting machine speed hits all alike.
Results: ``results.json`` (every run), ``results.md`` (targets, each one not met with its
measured reason: `probes`, `reasons`; tables) and ``results.png``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import probes as P  # noqa: E402
import report as R  # noqa: E402
import workloads as W  # noqa: E402

HERE = Path(__file__).resolve().parent
SECTIONS = ("throughput", "camera", "nice", "compression", "memory")

#: (label, opener, format, kwargs, workloads it runs on (None: all))
WRITERS = [
    ("raw disk", "raw", "raw", {}, None),
    ("service tiff", "service", "tiff", {}, None),
    ("service zarr", "service", "zarr", {}, None),
    ("service zarr claim", "service", "zarr", {"mode": "claim"}, ("W1", "W2")),
    # issue 19: the cost of resolution levels computed as frames arrive
    ("service tiff levels=4", "service", "tiff", {"levels": 4}, ("W1",)),
    ("service zarr levels=4", "service", "zarr", {"levels": 4}, ("W1",)),
    ("in-process zarr", "inprocess", "zarr", {}, ("W1",)),
    ("tensorstore alone", "tensorstore", "zarr", {}, ("W1",)),
    ("ome-writers tifffile", "ome_writers", "tiff", {"backend": "tifffile"}, ("W1",)),
    ("ome-writers tensorstore", "ome_writers", "zarr", {"backend": "tensorstore"}, ("W1",)),
]

#: the camera cases: (workload, frame rate, scale of its frame count, title)
CAMERA = [("W1", 100.0, 1.0, "100 fps 2048x2048"), ("W2", 5000.0, 0.5, "5 kHz 256x256")]

#: the nice level the priority section compares with 0
NICE = 10

#: codecs compared with acquire-zarr: ours, level, acquire-zarr's (it has no plain zstd)
CODECS = [("blosc-zstd", 1, "blosc-zstd"), ("blosc-lz4", 1, "blosc-lz4"),
          ("zstd", 1, "blosc-zstd")]


def writers(words: list[str]) -> list[tuple]:
    """The writers whose packages are installed (and whose label has one of ``words``)."""
    have = importlib.util.find_spec("ome_writers") is not None
    return [w for w in WRITERS if (have or w[1] != "ome_writers")
            and (not words or any(x in w[0] for x in words))]


# ---------------------------------------------------------------- child process

def child(spec: dict) -> None:
    """Run one writer once; print its metrics as JSON.

    Opening the writer is set-up (timed apart, as ``open_s``); the clock for throughput
    starts at the first append and stops when close() returns (``close_s``)."""
    if spec.get("pin") is not None:
        os.sched_setaffinity(0, {spec["pin"]})
    wl = next(w for w in W.workloads(spec["scale"]) if w.name == spec["workload"])
    frames = W.frame_pool(wl)
    suffix = {"tiff": ".ome.tiff", "zarr": ".ome.zarr", "raw": ".raw"}[spec["format"]]
    root = Path(spec["workdir"]) / f"{spec['workload']}-{spec['fn']}{suffix}"
    kw = dict(spec.get("kwargs", {}))
    if spec["fn"] == "service":
        kw.update(endpoint=spec["endpoint"], token=spec["token"])
    t_open = time.perf_counter()
    session = W.OPENERS[spec["fn"]](wl, root, spec["format"], **kw)
    res: dict = {"open_s": time.perf_counter() - t_open}
    W.fault_in(int(wl.nbytes * 1.2))
    probe = None if session.stream is None else P.ClientProbe(session.stream)
    system = P.SystemProbe(spec.get("daemon_pid"))  # the daemon on the clock, not its set-up
    system.start()
    cpu0 = _cpu_s(resource.getrusage(resource.RUSAGE_SELF))
    t0 = time.perf_counter()
    if spec.get("rate_hz"):
        lat, late, starts = W.paced_loop(session.append, frames, wl.n_frames, spec["rate_hz"])
        res["lateness_us"] = _pct(late)
    else:
        lat, starts = W.timed_loop(session.append, frames, wl.n_frames)
    res["loop_s"] = time.perf_counter() - t0
    res["backlog"] = session.backlog()
    if probe is not None:
        res["client_probe"] = probe.summary(starts, lat, slow_ns=1_000_000)
    res.update(session.close())
    if "claim_ns" in res:
        res["claim_us"] = _pct(res.pop("claim_ns"))
    res["close_s"] = time.perf_counter() - t0
    res["cpu_s"] = _cpu_s(resource.getrusage(resource.RUSAGE_SELF)) - cpu0
    res["system"] = system.stop()
    if spec.get("daemon_pid"):
        res["daemon_cpu_s"] = res["system"]["daemon_cpu_s"]
    res["latency_us"] = _pct(lat)
    if spec.get("memcpy"):
        res["memcpy_us"] = _pct(W.memcpy(wl, frames, spec.get("rate_hz")))
    if spec.get("ratio"):
        stored = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
        res["ratio"] = wl.nbytes / stored
    res["client_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    res["bytes"] = wl.nbytes
    res["frames"] = wl.n_frames
    print(json.dumps(res))


def _cpu_s(ru) -> float:
    return ru.ru_utime + ru.ru_stime


def _pct(ns: np.ndarray) -> dict:
    us = ns / 1e3
    return {"p50": float(np.percentile(us, 50)), "p99": float(np.percentile(us, 99)),
            "max": float(us.max())}


# ---------------------------------------------------------------- processes

class DaemonHandle:
    """A writer daemon of our own (``serve`` with ``args``), optionally on ``cpus`` only."""

    def __init__(self, args: tuple[str, ...] = (), cpus: set[int] | None = None) -> None:
        self.rt = Path(tempfile.mkdtemp(prefix="ows-bench-rt-"))
        pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
        self.proc = subprocess.Popen([sys.executable, "-m", "ome_writers_service", "serve",
                                      "--runtime-dir", str(self.rt), *args],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     preexec_fn=pin)
        deadline = time.monotonic() + 30
        while not (self.rt / "daemon.json").exists():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"daemon {args} did not start")
            time.sleep(0.05)
        time.sleep(0.1)
        info = json.loads((self.rt / "daemon.json").read_text())
        self.endpoint, self.token = info["endpoint"], info["token"]

    def reset_peak(self) -> None:
        Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")

    def status_mb(self, key: str) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)
        shutil.rmtree(self.rt, ignore_errors=True)


class RssSampler(threading.Thread):
    """A daemon's resident size (VmRSS), sampled every 5 ms while a run lasts. (The kernel's
    high-water mark, VmHWM, sits up to ~90 MB above anything a sampler sees on these VMs.)"""

    def __init__(self, daemon: DaemonHandle) -> None:
        super().__init__(daemon=True)
        self._daemon, self._done, self.peak_mb = daemon, threading.Event(), 0.0

    def run(self) -> None:
        while not self._done.wait(0.005):
            self.peak_mb = max(self.peak_mb, self._daemon.status_mb("VmRSS"))

    def stop(self) -> float:
        self._done.set()
        self.join()
        return self.peak_mb


class Busy:
    """A process that keeps one core busy while a run lasts (the camera baseline's and the
    priority section's competing load)."""

    def __enter__(self):
        self.proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        return self

    def __exit__(self, *exc) -> None:
        self.proc.kill()
        self.proc.wait()


class Bench:
    def __init__(self, a: argparse.Namespace, workdir: Path) -> None:
        self.a, self.workdir = a, workdir
        self.daemon = DaemonHandle()
        self._daemons = [self.daemon]
        self.warm_up(self.daemon)

    def extra_daemon(self, args: tuple[str, ...] = (), cpus: set[int] | None = None):
        d = DaemonHandle(args, cpus)
        self._daemons.append(d)
        self.warm_up(d)
        return d

    def warm_up(self, daemon: DaemonHandle) -> None:
        """One small untimed stream of each format, so that no timed run pays for a daemon's
        first stream (its imports, the tensorstore context)."""
        for fmt in ("zarr", "tiff"):
            self.run({"workload": "W2", "fn": "service", "format": fmt, "scale": 0}, daemon)

    def close(self) -> None:
        for d in self._daemons:
            d.stop()

    def run(self, spec: dict, daemon: DaemonHandle | None = None, busy: bool = False) -> dict:
        """One child run; ``daemon`` (default: the main one) serves a service writer."""
        daemon = daemon or self.daemon
        spec = {"scale": self.a.scale, "workdir": str(self.workdir), "kwargs": {},
                "endpoint": daemon.endpoint, "token": daemon.token, **spec}
        os.sync()  # no writeback of the previous run's data competes with this one
        service = spec["fn"] == "service"
        if service:
            spec["daemon_pid"] = daemon.proc.pid
            daemon.reset_peak()
            sampler = RssSampler(daemon)
            sampler.start()
        try:
            if busy:
                with Busy():
                    res = self._child(spec)
            else:
                res = self._child(spec)
        finally:
            if service:
                sampled = sampler.stop()
            _clean(self.workdir)
        if service and "error" not in res:
            res["daemon_peak_rss_mb"] = sampled
            res["daemon_hwm_rss_mb"] = daemon.status_mb("VmHWM")
        return res

    @staticmethod
    def _child(spec: dict) -> dict:
        res = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)],
                             capture_output=True, text=True, timeout=1800)
        if res.returncode != 0:
            return {"error": res.stderr.strip().splitlines()[-1] if res.stderr else "failed"}
        return json.loads(res.stdout.strip().splitlines()[-1])


def _say(section: str, rep: int, repeats: int, label: str, r: dict, what: str = "") -> None:
    if "error" in r:
        msg = f"error: {r['error']}"
    elif "lateness_us" in r:
        msg = (f"lateness p99 {r['lateness_us']['p99']:8.0f} us, append p99 "
               f"{r['latency_us']['p99']:7.1f} max {r['latency_us']['max']:7.0f} us")
    else:
        msg = f"{R.mbps(r):7.0f} MB/s, {R.fps(r):8.0f} frames/s"
    print(f"  {section} [{rep + 1}/{repeats}] {label:28s} {msg} {what}", flush=True)


# ---------------------------------------------------------------- sections

def throughput(b: Bench) -> dict:
    a = b.a
    words = [w for w in a.writers.split(",") if w]
    out = {}
    for wl in W.workloads(a.scale):
        if wl.name not in a.workloads.split(","):
            continue
        print(f"{wl.name} {wl.title}: {wl.n_frames} frames, {wl.nbytes / 1e9:.2f} GB", flush=True)
        runs: dict[str, list] = {}
        for rep in range(a.repeats):
            for label, fn, fmt, kw, only in writers(words):
                if only is not None and wl.name not in only:
                    continue
                r = b.run({"workload": wl.name, "fn": fn, "format": fmt, "kwargs": kw})
                runs.setdefault(label, []).append(r)
                _say(wl.name, rep, a.repeats, label, r)
        out[wl.name] = {"title": wl.title, "frames": wl.n_frames, "bytes": wl.nbytes,
                        "runs": runs}
    return out


def camera(b: Bench) -> dict:
    """Frames due at a fixed rate; how late is each handed over? The baseline is the same
    paced producer doing only the memcpy (into a ring-sized footprint) while a process keeps
    the other core busy, as the daemon would. Pinned: the producer on core 0, a daemon of its
    own on core 1 (taskset): what is left is the client's own cost."""
    cpus = sorted(os.sched_getaffinity(0))
    pinned = b.extra_daemon(cpus={cpus[1]}) if len(cpus) > 1 else None
    out = {}
    for wname, rate, scale, title in CAMERA:
        variants = [("baseline", {"fn": "memcpy", "format": "raw"}, None, True),
                    ("service tiff", {"fn": "service", "format": "tiff"}, None, False),
                    ("service zarr", {"fn": "service", "format": "zarr"}, None, False)]
        if pinned is not None:
            pin = {"pin": cpus[0], "memcpy": True}
            variants += [
                ("pinned tiff", {"fn": "service", "format": "tiff", **pin}, pinned, False),
                ("pinned zarr", {"fn": "service", "format": "zarr", **pin}, pinned, False),
                ("pinned zarr claim", {"fn": "service", "format": "zarr",
                                       "kwargs": {"mode": "claim"}, **pin}, pinned, False)]
        runs: dict[str, list] = {}
        for rep in range(b.a.repeats):
            for label, spec, daemon, busy in variants:
                r = b.run({"workload": wname, "rate_hz": rate, **spec,
                           "scale": b.a.scale * scale}, daemon, busy=busy)
                runs.setdefault(label, []).append(r)
                _say(f"camera {title}", rep, b.a.repeats, label, r)
        out[title] = {"runs": runs, "rate_hz": rate, "about": (
            f"Frames due every {1e6 / rate:,.0f} µs; lateness: how late append() was called "
            "for its frame (the producer sleeps until just before each due time, then spins). "
            "baseline: the same producer doing only the memcpy into a ring-sized footprint, a "
            "CPU-busy process running. pinned: producer on one core, a daemon of its own on "
            "the other (memcpy p99 measured in the same process after the run).")}
    return out


def nice(b: Bench) -> dict:
    """A busy acquisition PC: a CPU-bound process competes with the camera loop and the
    daemon. The same 5 kHz producer against a daemon at nice 0 and one at nice NICE."""
    wname, rate, scale, title = CAMERA[1]
    daemons = [(f"daemon nice 0", b.extra_daemon(("--nice", "0"))),
               (f"daemon nice {NICE}", b.extra_daemon(("--nice", str(NICE))))]
    runs: dict[str, list] = {}
    for rep in range(b.a.repeats):
        for label, d in daemons:
            r = b.run({"workload": wname, "rate_hz": rate, "fn": "service", "format": "zarr",
                       "scale": b.a.scale * scale}, d, busy=True)
            runs.setdefault(label, []).append(r)
            _say("nice", rep, b.a.repeats, label, r)
    return {"case": f"{title} OME-Zarr", "runs": runs, "about": (
        f"A CPU-bound process runs beside the producer ({title}, OME-Zarr) and the daemon, "
        f"which runs at nice 0 or at nice {NICE} (`serve --nice {NICE}`).")}


def compression(b: Bench) -> dict:
    out: dict = {c: {"level": lvl, "theirs": f"{theirs} level {lvl}, shuffle", "runs": {}}
                 for c, lvl, theirs in CODECS}
    have_az = importlib.util.find_spec("acquire_zarr") is not None
    for rep in range(b.a.repeats):
        for codec, level, theirs in CODECS:
            specs = [("service", {"fn": "service", "format": "zarr",
                                  "kwargs": {"compression": codec,
                                             "compression_level": level}})]
            if have_az:
                specs.append(("acquire-zarr", {"fn": "acquire_zarr", "format": "zarr",
                                               "kwargs": {"compression": theirs,
                                                          "level": level}}))
            for label, spec in specs:
                r = b.run({"workload": "C", "ratio": True, **spec})
                out[codec]["runs"].setdefault(label, []).append(r)
                _say(f"compression {codec}", rep, b.a.repeats, label, r,
                     "" if "error" in r else f"ratio {r['ratio']:.2f}")
    return out


def memory(b: Bench) -> dict:
    """The daemon's peak resident size for W2 at 1x and 4x the frames, each run in a daemon
    of its own (no earlier run's memory counts): bounded means equal."""
    scales = {"x1": 0.25 * b.a.scale, "x4": b.a.scale}
    runs: dict[str, list] = {"x1": [], "x4": []}
    frames = {}
    for rep in range(b.a.repeats):
        for k, scale in scales.items():
            d = DaemonHandle()
            try:
                r = b.run({"workload": "W2", "fn": "service", "format": "zarr", "scale": scale},
                          d)
            finally:
                d.stop()
            runs[k].append(r)
            frames[k] = r.get("frames", frames.get(k))
            _say("memory", rep, b.a.repeats, k, r,
                 f"daemon peak {r.get('daemon_peak_rss_mb', 0):.0f} MB")
    return {"runs": runs, "frames": frames}


# ---------------------------------------------------------------- main

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--scale", type=float, default=1.0, help="multiply frame counts (0-1]")
    ap.add_argument("--repeats", type=int, default=5,
                    help="interleaved repeats (medians over them; at least 5 on a shared VM, "
                         "where a single run can be 2x slow)")
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"some of {SECTIONS}")
    ap.add_argument("--workloads", default="W1,W2,W3", help="throughput workloads")
    ap.add_argument("--writers", default="", help="throughput: only writers whose label "
                                                   "contains one of these comma-separated words")
    ap.add_argument("--out", default=str(HERE / "results"), help="results directory")
    ap.add_argument("--workdir", default=None, help="where datasets are written (deleted after)")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--report-only", metavar="RESULTS_JSON",
                    help="write results.md and results.png again from a results.json")
    a = ap.parse_args()
    if a.child:
        child(json.loads(a.child))
        return 0
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.report_only:
        results = json.loads(Path(a.report_only).read_text())
    else:
        results = measure(a)
        (out / "results.json").write_text(json.dumps(results, indent=1, default=_np))
    md = R.report(results)
    (out / "results.md").write_text(md)
    print(md)
    if not a.no_plot:
        R.plot(results, out / "results.png")
    return 0


def measure(a: argparse.Namespace) -> dict:
    start = time.monotonic()
    workdir = Path(a.workdir or tempfile.mkdtemp(prefix="ows-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    results: dict = {"machine": _machine(), "scale": a.scale, "repeats": a.repeats}
    b = Bench(a, workdir)
    chosen = a.sections.split(",")
    try:
        for name, fn, key in (("throughput", throughput, "workloads"), ("camera", camera, None),
                              ("nice", nice, None), ("compression", compression, None),
                              ("memory", memory, "memory_scaling")):
            if name in chosen:
                t = time.monotonic()
                results[key or name] = fn(b)
                print(f"{name}: {time.monotonic() - t:.0f} s", flush=True)
    finally:
        b.close()
        shutil.rmtree(workdir, ignore_errors=True) if a.workdir is None else _clean(workdir)
    results["elapsed_s"] = time.monotonic() - start
    return results


def _np(o):
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    raise TypeError(type(o))


def _clean(workdir: Path) -> None:
    for p in workdir.iterdir():
        shutil.rmtree(p) if p.is_dir() else p.unlink()


def _machine() -> dict:
    return {"cpus": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform()}


if __name__ == "__main__":
    sys.exit(main())
