"""Command line: ``ome-writers-service {serve,status,demo,validate,recover,info,schema}``."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np


def _demo_settings(root: str, sizes: dict[str, int], positions: int):
    from .schema import AcquisitionSettings, Channel, Dimension, PositionDimension

    dims = [
        Dimension(name="t", count=sizes["t"], chunk_size=1, type="time", scale=2.0, unit="s"),
        PositionDimension(coords=[f"pos{i}" for i in range(positions)]) if positions > 1 else None,
        Dimension(name="c", count=2, type="channel", coords=[
            Channel(name="DAPI", excitation_wavelength_nm=405, emission_wavelength_nm=460,
                    color="blue"),
            Channel(name="GFP", excitation_wavelength_nm=488, emission_wavelength_nm=510,
                    color="green"),
        ]),
        Dimension(name="z", count=sizes["z"], chunk_size=1, type="space", scale=0.5, unit="um"),
        Dimension(name="y", count=sizes["y"], chunk_size=sizes["y"], scale=0.1625, unit="um"),
        Dimension(name="x", count=sizes["x"], chunk_size=sizes["x"], scale=0.1625, unit="um"),
    ]
    return AcquisitionSettings(
        root_path=root, dimensions=[d for d in dims if d is not None], dtype="uint16",
        overwrite=True,
    )


def _synthetic_frame(i: int, shape: tuple[int, int]) -> np.ndarray:
    """A cheap, recognisable frame: a moving gradient plus the frame number."""
    y, x = np.ogrid[: shape[0], : shape[1]]
    return ((x + y + 7 * i) % 4096 + i).astype(np.uint16)


def _demo_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the demo's arguments, in one line; None when nothing is."""
    for flag, value, low in (("--t", args.t, 1), ("--z", args.z, 1), ("--size", args.size, 1),
                             ("--positions", args.positions, 1)):
        if value < low:
            return f"{flag} must be at least {low}, not {value}"
    return None


def _stop_daemon(pid: int, timeout: float = 15.0) -> None:
    """Ask the daemon this command started to stop and wait until it has exited."""
    import os

    from .platform import WINDOWS, ProcessWatch, request_stop

    watch = ProcessWatch(pid)
    try:
        if not request_stop(pid):
            return
        deadline = time.monotonic() + timeout
        while watch.alive() and time.monotonic() < deadline:  # a zombie counts as gone
            time.sleep(0.05)
    finally:
        watch.close()
    if not WINDOWS:
        try:
            os.waitpid(pid, os.WNOHANG)  # our child: reap it
        except ChildProcessError:  # not our child, or already reaped
            pass


def cmd_demo(args: argparse.Namespace) -> int:
    """Start a daemon, stream into both formats at once from this process, validate."""
    import shutil

    from .client import local_daemon
    from .api import create_stream
    from .platform import make_private_temp_dir
    from .validate import validate_all

    problem = _demo_problem(args)
    out = Path(args.out).expanduser().resolve()
    sizes = {"t": args.t, "z": args.z, "y": args.size, "x": args.size}
    if problem is None:
        try:  # settings first: a mistake is reported before a daemon is started
            settings = [_demo_settings(str(out / f"demo{sfx}"), sizes, args.positions)
                        for sfx in (".ome.zarr", ".ome.tiff")]
        except ValueError as e:
            problem = " ".join(str(e).split("\n")[1:3]).strip() or str(e)
    if problem is None:
        try:
            out.mkdir(parents=True, exist_ok=True)
            probe = out / ".ows-demo-write-test"
            probe.touch()
            probe.unlink()
        except OSError as e:
            problem = f"--out {args.out}: cannot write there ({e.strerror or e})"
    if problem is not None:
        print(f"ome-writers-service demo: {problem}", file=sys.stderr)
        return 2
    rt_dir = None
    if args.use_running:
        from .client import DaemonGoneError

        try:
            info = local_daemon(start=False)
        except DaemonGoneError as e:
            print(f"ome-writers-service demo: --use-running: {e}", file=sys.stderr)
            return 2
        print(f"using the running daemon (pid {info.pid}) at {info.endpoint}")
    else:
        rt_dir = make_private_temp_dir("ows-demo-")
        try:
            info = local_daemon(rt_dir, idle_exit=60)
        except Exception:
            shutil.rmtree(rt_dir, ignore_errors=True)
            raise
        print(f"started daemon pid {info.pid} listening on {info.endpoint}")
    ok = True
    try:
        streams = [create_stream(s, endpoint=info.endpoint, token=info.token) for s in settings]
        n = settings[0].num_frames
        frames = [_synthetic_frame(i, settings[0].frame_shape) for i in range(16)]
        nbytes = settings[0].frame_nbytes
        t0 = time.perf_counter()
        last = t0
        for i in range(n):
            for s in streams:
                s.append(frames[i % 16], frame_metadata={"delta_t": i * 0.01} if i % 50 == 0 else None)
            now = time.perf_counter()
            if now - last > 0.5 or i + 1 == n:
                last = now
                rate = (i + 1) * len(streams) * nbytes / (now - t0) / 1e6
                parts = [f"{s._settings.format_name}: lag {s.lag:3d} dropped {s.frames_dropped}"
                         for s in streams]
                print(f"  {i + 1:5d}/{n} frames per stream  {rate:6.0f} MB/s  " + "  ".join(parts),
                      flush=True)
        reports = [s.close() for s in streams]
        dt = time.perf_counter() - t0
        mb = n * len(streams) * nbytes / 1e6
        print(f"{len(streams)} streams, {n} frames each, {mb:.0f} MB in {dt:.2f} s "
              f"({mb / dt:.0f} MB/s through close)")
        for s, rep in zip(settings, reports):
            print(f"{s.output_path}: {rep['frames_written']} written, {rep['frames_dropped']} "
                  f"dropped, errors: {rep['errors'] or 'none'}")
            ok &= rep["frames_written"] == n and not rep["errors"]
            for report in validate_all(s.output_path):  # every file of a multi-file dataset
                print(report)
                ok &= report.ok
    finally:
        if rt_dir is not None:
            _stop_daemon(info.pid)
            shutil.rmtree(rt_dir, ignore_errors=True)
    print("demo:", "all datasets written and valid" if ok else "FAILED")
    return 0 if ok else 1


def _quiet_tifffile() -> None:
    """tifffile logs every damaged tag of a truncated file; the reports say what matters."""
    import logging

    logging.getLogger("tifffile").setLevel(logging.CRITICAL)


def cmd_validate(args: argparse.Namespace) -> int:
    from .validate import validate_all

    _quiet_tifffile()
    ok = True
    for path in args.paths:
        for report in validate_all(path):  # every file of a multi-file OME-TIFF
            print(report)
            ok &= report.ok
    return 0 if ok else 1


def cmd_serve(args: argparse.Namespace) -> int:
    import logging

    import zmq

    from .daemon import run

    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        run(args.endpoint, rt_dir=args.runtime_dir, idle_exit=args.idle_exit,
            allow_remote=args.allow_remote, curve=args.curve,
            memory_budget=args.memory_budget, nice=args.nice)
    except (ValueError, OSError, zmq.ZMQError) as e:  # bad endpoint, address in use, ...
        print(f"ome-writers-service serve: {e}", file=sys.stderr)
        return 2
    return 0


def _bar(fraction: float, width: int = 24) -> str:
    filled = int(round(max(0.0, min(1.0, fraction)) * width))
    return "[" + "#" * filled + "." * (width - filled) + "]"


def _format_status(st: dict) -> str:
    """One block per stream: progress bar, rate, lag behind the camera, drops, ring, ETA."""
    lines = [f"daemon pid {st.get('pid')} (version {st.get('version')}): "
             f"{len(st.get('streams', {}))} open stream(s)"]
    for sid, r in st.get("streams", {}).items():
        total, done = r["frames_expected"], r["frames_written"]
        rate = r["rate_fps"]
        lag = r["frames_received"] - done
        if total:
            eta = f"ETA {(total - done) / rate:6.1f} s" if rate > 0 else "ETA      ?"
            progress = f"{_bar(done / total)} {done}/{total} written {100 * done / total:5.1f}%"
        else:
            eta, progress = "unbounded", f"{done} written"
        ring = f"ring {r['backlog']}/{r['ring_slots']} ({100 * r['backlog'] / r['ring_slots']:.0f}%)"
        lines.append(f"  [{sid}] {r['root_path']}")
        lines.append(f"      {progress}  {rate:,.0f} frames/s  lag {lag}  "
                     f"dropped {r['frames_dropped']}  {ring}  {eta}"
                     + (f"  ERRORS: {r['errors']}" if r["errors"] else ""))
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> int:
    import json
    import os

    from .client import ServiceError, daemon_status
    from .connection import ConnectionInfo, runtime_dir

    info = ConnectionInfo.read(runtime_dir(args.runtime_dir))
    endpoint = args.endpoint or (info.endpoint if info is not None else None)
    token = args.token or os.environ.get("OME_WRITERS_SERVICE_TOKEN") or \
        (info.token if info is not None and info.endpoint == endpoint else None)
    if endpoint is None:
        print("no daemon is running (no connection file)", file=sys.stderr)
        return 1
    if not endpoint.startswith(("ipc://", "tcp://")):
        print(f"ome-writers-service status: cannot connect to {endpoint!r}: an endpoint looks "
              "like ipc:///path/to/socket or tcp://127.0.0.1:5555", file=sys.stderr)
        return 2
    if token is None:
        print(f"ome-writers-service status: no token for {endpoint}: pass --token or set "
              "OME_WRITERS_SERVICE_TOKEN (the daemon's connection file holds it)", file=sys.stderr)
        return 2
    import zmq

    refreshes = 0
    while True:
        try:
            st = daemon_status(endpoint, token, curve=info.curve_keys if info is not None
                               and info.endpoint == endpoint else None)
        except (TimeoutError, ServiceError) as e:
            print(e, file=sys.stderr)
            return 1
        except zmq.ZMQError as e:  # a malformed endpoint, an unknown transport, ...
            print(f"ome-writers-service status: cannot connect to {endpoint!r}: {e} (an "
                  "endpoint looks like ipc:///path/to/socket or tcp://127.0.0.1:5555)",
                  file=sys.stderr)
            return 2
        text = json.dumps(st, indent=2) if args.json else _format_status(st)
        if args.watch is None:
            print(text)
            return 0
        # redraw in place on a terminal; plain successive blocks in a log
        print(("\x1b[H\x1b[J" if sys.stdout.isatty() else "") + text, flush=True)
        refreshes += 1
        if args.count is not None and refreshes >= args.count:
            return 0
        try:
            time.sleep(args.watch)
        except KeyboardInterrupt:
            return 0


def cmd_recover(args: argparse.Namespace) -> int:
    from .recover import recover
    from .validate import validate

    ok = True
    for path in args.paths:
        try:
            summary = recover(path)
        except (OSError, ValueError) as e:
            print(f"{path}: {e}", file=sys.stderr)
            ok = False
            continue
        except Exception as e:  # noqa: BLE001 - a damaged dataset: say so, go on
            print(f"{path}: recovery failed: {type(e).__name__}: {e}", file=sys.stderr)
            ok = False
            continue
        print(f"{path}: recovered {summary}")
        targets = summary["paths"] if summary["format"] == "ome-tiff" else [path]
        for target in targets:
            report = validate(target)
            print(report)
            ok &= report.ok
    return 0 if ok else 1


def cmd_info(args: argparse.Namespace) -> int:
    import json

    from .metadata import dataset_info

    _quiet_tifffile()
    ok = True
    for path in args.paths:  # a bad path is reported, the others are still shown
        try:
            info = dataset_info(path)
        except (OSError, ValueError, KeyError) as e:
            print(f"{path}: cannot read: {e}", file=sys.stderr)
            ok = False
            continue
        except Exception as e:  # noqa: BLE001 - never a traceback for a bad input
            print(f"{path}: cannot read: {type(e).__name__}: {e}", file=sys.stderr)
            ok = False
            continue
        print(f"{path}:")
        print(json.dumps(info, indent=2, default=str))
    return 0 if ok else 1


def cmd_schema(args: argparse.Namespace) -> int:
    from .wire_settings import schema_text

    sys.stdout.write(schema_text())
    return 0


def _size(text: str) -> int:
    from .chunk_buffers import parse_size

    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="ome-writers-service",
        description="Stream microscope frames into OME-Zarr v0.5 and OME-TIFF.",
    )
    sub = ap.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="start a daemon, stream a realistic acquisition into "
                                       "OME-Zarr and OME-TIFF at once, validate the result")
    demo.add_argument("--out", default="out/demo", help="directory for the datasets")
    demo.add_argument("--t", type=int, default=50, help="time points")
    demo.add_argument("--z", type=int, default=10, help="z planes")
    demo.add_argument("--size", type=int, default=512, help="frame height and width")
    demo.add_argument("--positions", type=int, default=2, help="stage positions")
    demo.add_argument("--use-running", action="store_true",
                      help="stream to the daemon already running for this runtime directory "
                           "($OME_WRITERS_SERVICE_RUNTIME_DIR) instead of starting one")
    demo.set_defaults(func=cmd_demo)

    serve = sub.add_parser("serve", help="run the writer daemon in the foreground")
    serve.add_argument("--endpoint", help="ipc://PATH or tcp://127.0.0.1:PORT (default: an ipc "
                                          "socket in the runtime directory; on Windows "
                                          "tcp://127.0.0.1 on a free port)")
    serve.add_argument("--runtime-dir", help="directory for the connection file and socket "
                                             "(default: $XDG_RUNTIME_DIR/ome-writers-service-UID; "
                                             r"on Windows %%LOCALAPPDATA%%\ome-writers-service)")
    serve.add_argument("--idle-exit", type=float, default=None, metavar="SECONDS",
                       help="exit after this long without open streams")
    serve.add_argument("--allow-remote", action="store_true",
                       help="allow a non-loopback TCP endpoint (always encrypted with CURVE)")
    serve.add_argument("--curve", action="store_true",
                       help="encrypt connections with CURVE on a loopback endpoint too")
    serve.add_argument("--memory-budget", type=_size, default=None, metavar="SIZE",
                       help="memory the streams' chunk buffers may take together, worst case "
                            "(e.g. 8G, 512M; default: 40%% of the RAM); a stream that would not "
                            "fit is refused, naming the chunk size to change")
    serve.add_argument("--nice", type=int, default=None, metavar="N",
                       help="run the writer at CPU priority nice N (0 normal .. 19 lowest), "
                            "below the acquisition program's, so that a busy PC's cores go to "
                            "the camera loop first (POSIX; ignored on Windows)")
    serve.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    serve.set_defaults(func=cmd_serve)

    status = sub.add_parser("status", help="show the daemon's open streams")
    status.add_argument("--endpoint", help="daemon endpoint (default: the local daemon)")
    status.add_argument("--token", help="the daemon's token (default: $OME_WRITERS_SERVICE_TOKEN "
                                        "or the local connection file)")
    status.add_argument("--runtime-dir", help="runtime directory of the local daemon")
    status.add_argument("--json", action="store_true", help="print the raw status as JSON")
    status.add_argument("--watch", nargs="?", type=float, const=1.0, default=None,
                        metavar="SECONDS", help="refresh every SECONDS (default 1) until Ctrl-C")
    status.add_argument("--count", type=int, default=None, help="with --watch: stop after N "
                                                               "refreshes")
    status.set_defaults(func=cmd_status)

    rec = sub.add_parser("recover", help="finalize datasets whose writer died, from their "
                                         "journal (<output path>.ows-journal; the "
                                         "root_path you gave finds it too)")
    rec.add_argument("paths", nargs="+", help="root paths of the datasets")
    rec.set_defaults(func=cmd_recover)

    info = sub.add_parser("info", help="shape, axes, channels, scales and acquisition summary "
                                       "of datasets")
    info.add_argument("paths", nargs="+", help="OME-Zarr stores or OME-TIFF files (or the root "
                                               "path of a multi-position OME-TIFF)")
    info.set_defaults(func=cmd_info)

    val = sub.add_parser("validate", help="check datasets with independent validators")
    val.add_argument("paths", nargs="+", help="OME-Zarr stores or OME-TIFF files (the root path "
                                              "of a multi-position OME-TIFF checks all its files)")
    val.set_defaults(func=cmd_validate)

    schema = sub.add_parser("schema", help="print the JSON Schema (draft 2020-12) of the "
                                           "settings an `open` message carries (PROTOCOL.md §4)")
    schema.set_defaults(func=cmd_schema)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
