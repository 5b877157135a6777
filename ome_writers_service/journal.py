"""A small sidecar journal kept while a dataset is being written.

``<root_path>.ows-journal`` holds the settings (first line) and every gap in the frame
sequence (skipped or dropped frames, one JSON line each). Nothing is written per frame: pages
and chunks on disk already say which frames arrived, in order. The journal is removed when the
stream is finalized, so one that remains marks a dataset whose writer died;
``ome-writers-service recover`` reads it to finalize the dataset.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from .schema import AcquisitionSettings

SUFFIX = ".ows-journal"
VERSION = 1


def journal_path(settings: AcquisitionSettings) -> Path:
    return Path(settings.output_path + SUFFIX)


class Journal:
    """Appends to a dataset's journal; flushed at every line so a crash keeps it."""

    def __init__(self, settings: AcquisitionSettings) -> None:
        self.path = journal_path(settings)
        self._f = open(self.path, "w", encoding="utf-8")
        head = {"version": VERSION, "pid": os.getpid(), "started": time.time(),
                "settings": settings.model_dump(mode="json")}
        self._write(head)

    def _write(self, obj: dict) -> None:
        self._f.write(json.dumps(obj, separators=(",", ":")) + "\n")
        self._f.flush()

    def skipped(self, first_frame: int, count: int) -> None:
        self._write({"skip": [first_frame, count]})

    def remove(self) -> None:
        self._f.close()
        self.path.unlink(missing_ok=True)

    def close(self) -> None:
        self._f.close()


def read_journal(path: str | os.PathLike) -> tuple[AcquisitionSettings, set[int], dict]:
    """(settings, frame numbers skipped or dropped, header) of a journal file."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    if not lines:
        raise ValueError(f"{path}: empty journal")
    head = json.loads(lines[0])
    if head.get("version") != VERSION:
        raise ValueError(f"{path}: journal version {head.get('version')} is not supported")
    settings = AcquisitionSettings.model_validate(head["settings"])
    skipped: set[int] = set()
    for line in lines[1:]:
        try:
            start, count = json.loads(line)["skip"]
        except (ValueError, KeyError, TypeError):
            break  # a line cut short by the crash ends the journal
        skipped.update(range(start, start + count))
    return settings, skipped, head
