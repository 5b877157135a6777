"""A per-test timeout on Windows that fails the test, not the run.

pytest-timeout has two methods: ``signal`` (SIGALRM, POSIX only) and ``thread``, which on
expiry dumps the stacks and ends the whole process with ``os._exit(1)``: one hung test on
Windows loses the report of every other. Here, on Windows, pytest-timeout is set aside and
each phase of a test (setup, call, teardown) is watched by a timer thread with the same
``timeout`` (the ini value or the test's ``@pytest.mark.timeout``). On expiry it prints the
stacks and raises `TestTimeout` in the main thread, again every few seconds while the phase
goes on (Python delivers it at the next bytecode, so a wait in C code receives it when that
wait returns or times out); pytest reports the test failed and goes on. Only a phase still
running `GRACE` seconds after its timeout ends the run, as pytest-timeout would have.
"""

from __future__ import annotations

import ctypes
import faulthandler
import os
import sys
import threading
import time

import pytest

#: seconds between the first delivery of TestTimeout and ending the run
GRACE = 60.0
#: seconds between deliveries while the phase goes on
REDELIVER = 5.0


class TestTimeout(BaseException):
    """A test phase passed its timeout (BaseException: an ``except Exception`` in the code
    under test does not swallow it; pytest reports it as the test's failure)."""

    __test__ = False  # not a test class for pytest's collector


def _raise_in(thread_id: int, exc: type[BaseException]) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(exc))


def _timeout_of(item) -> float:
    marker = item.get_closest_marker("timeout")
    if marker is not None:
        value = marker.args[0] if marker.args else marker.kwargs.get("timeout", 0)
    else:
        value = item.config.getini("timeout") or 0
    return float(value or 0)


class _Watch:
    def __init__(self, nodeid: str, phase: str, timeout: float):
        self.nodeid, self.phase, self.timeout = nodeid, phase, timeout
        self.done = threading.Event()
        self.main = threading.get_ident()
        self.thread = threading.Thread(target=self._run, daemon=True,
                                       name=f"timeout {phase} {nodeid}")

    def _run(self) -> None:
        if self.done.wait(self.timeout):
            return
        err = sys.__stderr__
        print(f"\n+++ Timeout: {self.phase} of {self.nodeid} passed {self.timeout:g} s; "
              f"stacks:", file=err, flush=True)
        faulthandler.dump_traceback(file=err, all_threads=True)
        msg = f"{self.phase} passed the timeout of {self.timeout:g} s (stacks on stderr)"
        exc = type("TestTimeout", (TestTimeout,), {"__init__": lambda e: TestTimeout.__init__(e, msg)})
        deadline = time.monotonic() + GRACE
        while True:
            _raise_in(self.main, exc)
            if self.done.wait(REDELIVER):
                return
            if time.monotonic() > deadline:
                print(f"\n+++ Timeout: {self.phase} of {self.nodeid} did not end {GRACE:g} s "
                      f"after its timeout (blocked in C code); ending the run. Stacks:",
                      file=err, flush=True)
                faulthandler.dump_traceback(file=err, all_threads=True)
                os._exit(1)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join()
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self.main), None)  # undelivered
        return False


def _watched(item, phase: str):
    timeout = _timeout_of(item)
    if timeout <= 0:
        yield
        return
    with _Watch(item.nodeid, phase, timeout):
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    yield from _watched(item, "setup")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    yield from _watched(item, "call")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item):
    yield from _watched(item, "teardown")
