"""A small sidecar journal kept while a dataset is being written.

``<root_path>.ows-journal`` holds the settings (first line) and every gap in the frame
sequence (skipped or dropped frames, one JSON line each). Nothing is written per frame: pages
and chunks on disk already say which frames arrived, in order. The journal is removed when the
stream is finalized, so one that remains marks a dataset whose writer died;
``ome-writers-service recover`` reads it to finalize the dataset.

The journal of a dataset in object storage (``s3://bucket/key``) stays on the writing
machine's disk, under `journal_dir` (``s3/<bucket>/<key>.ows-journal``): it is appended to
line by line, which an object store cannot do.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from .schema import AcquisitionSettings
from .storage import S3Location, url_scheme

SUFFIX = ".ows-journal"
VERSION = 1
ENV_JOURNAL_DIR = "OME_WRITERS_SERVICE_JOURNAL_DIR"


def journal_dir() -> Path:
    """Where the journals of datasets in object storage are kept on this machine:
    ``$OME_WRITERS_SERVICE_JOURNAL_DIR``, else ``$XDG_STATE_HOME/ome-writers-service/
    journals`` (``~/.local/state/...``)."""
    given = os.environ.get(ENV_JOURNAL_DIR)
    if given:
        return Path(given)
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"),
                                                             ".local", "state")
    return Path(state) / "ome-writers-service" / "journals"


def journal_path_of(output_path: str) -> Path:
    """The journal of the dataset at ``output_path`` (a path or an s3:// URL)."""
    if url_scheme(output_path) == "s3":
        loc = S3Location.parse(output_path)
        return journal_dir() / "s3" / loc.bucket / (loc.key + SUFFIX)
    return Path(output_path + SUFFIX)


def journal_path(settings: AcquisitionSettings) -> Path:
    return journal_path_of(settings.output_path)


class Journal:
    """Appends to a dataset's journal; flushed at every line so a crash keeps it."""

    def __init__(self, settings: AcquisitionSettings) -> None:
        self.path = journal_path(settings)
        if url_scheme(settings.output_path) is not None:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # never through a symlink: the journal must not overwrite what it points to
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
        self._f = os.fdopen(fd, "w", encoding="utf-8")
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


class NullJournal:
    """The journal of a dataset that needs none (scratch arrays in memory)."""

    def skipped(self, first_frame: int, count: int) -> None:
        pass

    def remove(self) -> None:
        pass

    def close(self) -> None:
        pass


def read_journal(path: str | os.PathLike) -> tuple[AcquisitionSettings, set[int], dict]:
    """(settings, frame numbers skipped or dropped, header) of a journal file."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not an ome-writers-service journal (not text)") from e
    if not lines:
        raise ValueError(f"{path}: empty journal")
    try:
        head = json.loads(lines[0])
    except ValueError as e:
        raise ValueError(f"{path}: not an ome-writers-service journal (its first line is not "
                         f"JSON: {e})") from e
    if not isinstance(head, dict):
        raise ValueError(  # noqa: TRY004 - a bad file, reported like every other one
            f"{path}: not an ome-writers-service journal (its first line is not a JSON object)")
    if head.get("version") != VERSION:
        raise ValueError(f"{path}: journal version {head.get('version')} is not supported")
    if not isinstance(head.get("settings"), dict):
        raise ValueError(  # noqa: TRY004
            f"{path}: the journal holds no acquisition settings (damaged, or not written by "
            "ome-writers-service); the dataset cannot be recovered")
    try:
        settings = AcquisitionSettings.model_validate(head["settings"])
    except ValueError as e:  # pydantic's ValidationError
        first = str(e).splitlines()
        raise ValueError(f"{path}: the settings in the journal are not valid: "
                         f"{' '.join(ln.strip() for ln in first[1:3]) or e}") from e
    skipped: set[int] = set()
    for line in lines[1:]:
        try:
            start, count = json.loads(line)["skip"]
        except (ValueError, KeyError, TypeError):
            break  # a line cut short by the crash ends the journal
        skipped.update(range(start, start + count))
    return settings, skipped, head
