"""Run ome-writers 0.3.2's own test suite against ome_writers_service, through the shim.

The sdist is fetched at test time (`pip download --no-binary :all: --no-deps
ome-writers==0.3.2`) into the git-ignored ``.upstream/`` of the repository; only its
``tests/``, ``examples/``, ``tools/``, ``pyproject.toml`` (upstream's pytest configuration,
warnings as errors) and the pure helper modules the tests import are unpacked — never the
package itself, so ``import ome_writers`` can only find the shim.

    python tests/upstream/runner.py [--mode daemon|in_process] [-- pytest args]

prints every test's outcome against `expected_failures.txt` and exits 1 when they differ.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

VERSION = "0.3.2"
HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SHIM = HERE / "shim"
EXPECTED = HERE / "expected_failures.txt"
MODES = ("daemon", "in_process")
#: upstream's modules its tests import that are pure helpers, run from the sdist
HELPERS = ("_util.py", "_units.py", "_frame_encoder.py", "_memory.py")
#: parts of the sdist that are unpacked (relative to its top directory)
UNPACKED = ("tests/", "examples/", "tools/", "pyproject.toml")


def fetch_sdist(cache: Path = REPO / ".upstream") -> Path:
    """The unpacked sdist's directory (downloaded once per clone)."""
    top = cache / f"ome_writers-{VERSION}"
    if (top / ".complete").exists():
        return top
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-binary", ":all:", "--no-deps",
             f"ome-writers=={VERSION}", "-d", tmp], check=True)
        (sdist,) = Path(tmp).glob("ome_writers-*.tar.gz")
        staging = Path(tmp) / "unpacked"
        with tarfile.open(sdist) as tar:
            prefix = f"ome_writers-{VERSION}/"
            for member in tar.getmembers():
                rel = member.name[len(prefix):] if member.name.startswith(prefix) else None
                if rel is None or not (member.isfile() or member.isdir()):
                    continue
                if rel.startswith(UNPACKED) or rel == "pyproject.toml":
                    dest = staging / rel
                elif rel.startswith("src/ome_writers/") and Path(rel).name in HELPERS \
                        and rel.count("/") == 2:
                    dest = staging / "helpers" / Path(rel).name
                else:
                    continue
                if member.isdir():
                    dest.mkdir(parents=True, exist_ok=True)
                    continue
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(tar.extractfile(member).read())
        if top.exists():
            import shutil
            shutil.rmtree(top)
        staging.rename(top)
    (top / ".complete").write_text(VERSION)
    return top


@dataclass
class Outcome:
    passed: set[str] = field(default_factory=set)
    failed: dict[str, str] = field(default_factory=dict)  # test id -> first line of the error
    skipped: set[str] = field(default_factory=set)
    daemon_died: int | None = None
    daemon_log: str = ""

    @property
    def collected(self) -> int:
        return len(self.passed) + len(self.failed) + len(self.skipped)


def _test_id(case: ET.Element) -> str:
    cls, name = case.get("classname", ""), case.get("name", "")
    if not cls:  # a module that failed to import: "tests.test_x" -> tests/test_x.py
        return name.replace(".", "/") + ".py"
    parts = cls.split(".")
    # junit classname "tests.test_x" (or "tests.test_x.TestClass") -> tests/test_x.py[::TestClass]
    i = next((k for k, p in enumerate(parts) if p.startswith("test_")), len(parts) - 1)
    path = "/".join(parts[: i + 1]) + ".py"
    return "::".join([path, *parts[i + 1:], name])


def run(mode: str, pytest_args: list[str] = (), *, sdist: Path | None = None,
        quiet: bool = True) -> Outcome:
    """Run the upstream suite in ``mode`` in a subprocess; every test's outcome."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    sdist = sdist or fetch_sdist()
    with tempfile.TemporaryDirectory(prefix="ows-upstream-run-") as tmp:
        xml, report = Path(tmp) / "junit.xml", Path(tmp) / "daemon.json"
        env = {**os.environ, "PYTHONPATH": str(SHIM), "OWS_UPSTREAM_MODE": mode,
               "OWS_UPSTREAM_HELPERS": str(sdist / "helpers"),
               "OWS_UPSTREAM_DAEMON_REPORT": str(report),
               "PYTHONDONTWRITEBYTECODE": "1"}
        env.pop("OME_WRITERS_SERVICE_RUNTIME_DIR", None)
        cmd = [sys.executable, "-m", "pytest", "-p", "ows_upstream_plugin",
               "-p", "no:cacheprovider", "-o", "timeout=120",
               "--continue-on-collection-errors", f"--junitxml={xml}",
               "--basetemp", str(Path(tmp) / "t"), "-q" if quiet else "-v", "tests",
               *pytest_args]
        proc = subprocess.run(cmd, cwd=sdist, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
        if not xml.exists():
            raise RuntimeError(f"upstream run ({mode}) wrote no report:\n{proc.stdout[-5000:]}")
        out = Outcome()
        for case in ET.parse(xml).getroot().iter("testcase"):
            tid = _test_id(case)
            bad = case.find("failure")
            if bad is None:
                bad = case.find("error")
            if bad is not None:
                out.failed[tid] = (bad.get("message") or "").strip().splitlines()[0:1] and \
                    (bad.get("message") or "").strip().splitlines()[0][:300] or "?"
            elif case.find("skipped") is not None:
                out.skipped.add(tid)
            else:
                out.passed.add(tid)
        if report.exists():
            info = json.loads(report.read_text())
            out.daemon_died, out.daemon_log = info["died"], info["log"]
        if not quiet:
            print(proc.stdout)
        return out


def load_expected(path: Path = EXPECTED) -> dict[str, dict[str, str]]:
    """{mode: {test id: reason}} from expected_failures.txt (``id | modes | reason`` lines)."""
    out: dict[str, dict[str, str]] = {m: {} for m in MODES}
    counts: dict[str, int] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("collected"):
            _, mode, num = line.split()
            counts[mode] = int(num)
            continue
        try:
            tid, modes, reason = (p.strip() for p in line.split(" | ", 2))
        except ValueError:
            raise ValueError(f"{path}:{n}: expected 'test id | modes | reason': {line!r}")
        for mode in (MODES if modes == "both" else modes.split(",")):
            if mode not in MODES:
                raise ValueError(f"{path}:{n}: unknown mode {mode!r}")
            out[mode][tid] = reason
    out["_collected"] = counts  # type: ignore[assignment]
    return out


def compare(mode: str, outcome: Outcome, expected: dict) -> list[str]:
    """What differs from the committed expectation (empty: as expected)."""
    want = expected[mode]
    problems = []
    if outcome.daemon_died is not None:
        problems.append(f"the daemon died during the run (exit {outcome.daemon_died}):\n"
                        f"{outcome.daemon_log[-3000:]}")
    for tid, msg in sorted(outcome.failed.items()):
        if tid not in want:
            problems.append(f"FAILED (not expected): {tid}: {msg}")
    for tid in sorted(want):
        if tid in outcome.passed:
            problems.append(f"PASSED (expected to fail; remove it from {EXPECTED.name}): {tid}")
        elif tid not in outcome.failed and tid not in outcome.skipped:
            problems.append(f"NOT COLLECTED (listed in {EXPECTED.name}): {tid}")
    n = expected["_collected"].get(mode)
    if n is not None and outcome.collected != n:
        problems.append(f"collected {outcome.collected} tests, {EXPECTED.name} says {n}")
    return problems


def summary(mode: str, outcome: Outcome) -> str:
    total = len(outcome.passed) + len(outcome.failed)
    return (f"ome-writers {VERSION}'s test suite ({mode}): {len(outcome.passed)} of {total} pass"
            f" ({len(outcome.skipped)} skipped by upstream's own conditions, "
            f"{outcome.collected} collected)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=MODES, action="append")
    ap.add_argument("-v", "--verbose", action="store_true")
    ap.add_argument("pytest_args", nargs="*")
    args = ap.parse_args()
    expected = load_expected() if EXPECTED.exists() else {m: {} for m in MODES} | {"_collected": {}}
    status = 0
    for mode in args.mode or MODES:
        outcome = run(mode, args.pytest_args, quiet=not args.verbose)
        print(summary(mode, outcome))
        for tid, msg in sorted(outcome.failed.items()):
            print(f"  failed: {tid}: {msg}")
        problems = compare(mode, outcome, expected) if not args.pytest_args else []
        for p in problems:
            print("  " + p)
        status |= bool(problems)
    return status


if __name__ == "__main__":
    sys.exit(main())
