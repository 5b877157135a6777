"""A daemon of protocol 1.0 as far as refusing an `open` goes: a ROUTER socket (PLAIN)
that answers `ping` with a 1.0 `pong` and every `open` with the `error` a 1.0
daemon sent for settings it did not know — its pydantic text, no ``seq`` and no ``minor``.
It shows what a 1.1 client says when it meets an older daemon."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import zmq
from zmq.auth.thread import ThreadAuthenticator

#: What a 1.0 daemon answered for a settings field it did not know (abridged pydantic text).
REFUSAL = {"type": "error", "code": "invalid_settings", "exception": None,
           "message": "invalid settings: 1 validation error for AcquisitionSettings\n"
                      "dimensions.0.newer_field\n  Extra inputs are not permitted "
                      "[type=extra_forbidden, input_value=1, input_type=int]"}


class OldDaemon:
    def __init__(self, tmp: Path) -> None:
        self.token = "0" * 32
        self._ctx = zmq.Context()
        self._auth = ThreadAuthenticator(self._ctx)
        self._auth.start()
        self._auth.configure_plain(domain="*", passwords={"ows": self.token})
        self._sock = self._ctx.socket(zmq.ROUTER)
        self._sock.linger = 0
        self._sock.plain_server = True
        # ipc where ZeroMQ has it, else (Windows) loopback TCP, as a daemon would
        self._sock.bind(f"ipc://{tmp / 'old-daemon.sock'}" if zmq.has("ipc")
                        else "tcp://127.0.0.1:*")
        self.endpoint = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.opens: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            if not self._sock.poll(50):
                continue
            peer, _tag, header, *_ = self._sock.recv_multipart()
            h = json.loads(header)
            if h["type"] == "open":
                self.opens.append(h)
                reply = REFUSAL
            elif h["type"] == "ping":
                reply = {"type": "pong", "pid": 1}
            else:
                continue
            self._sock.send_multipart([peer, b"OWS1", json.dumps(reply).encode()])

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close(0)
        self._auth.stop()
        self._ctx.term()
