"""A small sidecar journal kept while a dataset is being written.

``<root_path>.ows-journal`` holds the settings (first line), every gap in the frame sequence
(skipped or dropped frames) and the per-frame metadata, one JSON line each. Pixels are not
journaled: pages and chunks on disk already say which frames arrived. Per-frame metadata
(timestamps, stage positions) goes to the files only at finalize, so it is journaled as it
arrives, in batches: the daemon writes the batch out before it releases the slots of the
frames in it, so a frame it released keeps its metadata whatever happens to the daemon. The
journal is removed when the stream is finalized; one that remains marks a dataset whose
writer died, and ``ome-writers-service recover`` reads it to finalize the dataset.

Lines (after the first): ``{"skip": [first, count]}``, ``{"meta": [[frame, {...}], ...]}``,
``{"buffers": path}`` (the shared-memory arena holding the daemon's chunk buffers).

The journal of a dataset in object storage (``s3://bucket/key``) stays on the writing
machine's disk, under `journal_dir` (``s3/<bucket>/<key>.ows-journal``): it is appended to
line by line, which an object store cannot do.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .safe_files import create_new_file
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


#: per-frame metadata rows the in-process writer batches before it writes them out
META_BATCH = 64


class Journal:
    """Appends to a dataset's journal. Gaps are written at once; per-frame metadata is
    batched until `flush` (or META_BATCH rows)."""

    def __init__(self, settings: AcquisitionSettings) -> None:
        self.path = journal_path(settings)
        if url_scheme(settings.output_path) is not None:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # a new file, never opened through a name planted there (a journal a crash left
        # behind at this path belonged to the dataset being replaced)
        fd = create_new_file(self.path, 0o644, replace_stale=True)
        self._f = os.fdopen(fd, "w", encoding="utf-8")
        self._meta: list[list] = []  # [frame, metadata] rows not written yet
        head = {"version": VERSION, "pid": os.getpid(), "started": time.time(),
                "settings": settings.model_dump(mode="json")}
        self._write(head)

    def _write(self, obj: dict) -> None:
        try:
            self._f.write(json.dumps(obj, separators=(",", ":")) + "\n")
            self._f.flush()  # in the OS's hands: a crash of this process keeps it
        except OSError as e:
            raise OSError(e.errno, f"{self.path}: cannot write the journal: "
                                   f"{e.strerror or e}") from e

    def skipped(self, first_frame: int, count: int) -> None:
        self.flush()  # lines stay in frame order
        self._write({"skip": [first_frame, count]})

    def buffers(self, path: str) -> None:
        """Where the chunk buffers live (a shared-memory arena `recover` can read)."""
        self._write({"buffers": path})

    def frame_metadata(self, frame: int, metadata: dict) -> None:
        """Per-frame metadata (checked: plain JSON values), written with the next flush."""
        self._meta.append([frame, metadata])
        if len(self._meta) >= META_BATCH:
            self.flush()

    def flush(self) -> None:
        """Write the batched metadata out (one line, one write)."""
        if self._meta:
            rows, self._meta = self._meta, []
            self._write({"meta": rows})

    def remove(self) -> None:
        self._f.close()
        self.path.unlink(missing_ok=True)

    def close(self) -> None:
        """Kept for `recover` (finalize failed): what was batched goes out first, if it can
        (on a full disk it cannot: the error that brought us here says so already)."""
        try:
            self.flush()
        except OSError:
            pass
        finally:
            try:
                self._f.close()
            except OSError:
                pass


class NullJournal:
    """The journal of a dataset that needs none (scratch arrays in memory)."""

    def skipped(self, first_frame: int, count: int) -> None:
        pass

    def buffers(self, path: str) -> None:
        pass

    def frame_metadata(self, frame: int, metadata: dict) -> None:
        pass

    def flush(self) -> None:
        pass

    def remove(self) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass
class JournalContents:
    """What a journal says of a dataset whose writer died."""

    settings: AcquisitionSettings
    skipped: set[int]  #: frame numbers skipped or dropped
    frame_metadata: dict[int, dict[str, Any]]  #: frame number -> its per-frame metadata
    head: dict[str, Any]  #: the first line (version, pid, start time, settings)
    buffers: str | None = None  #: the chunk buffers' shared-memory arena, if any


def read_journal(path: str | os.PathLike) -> JournalContents:
    """The contents of a journal file; a last line cut short by the crash ends it."""
    try:
        lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
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
    metadata: dict[int, dict[str, Any]] = {}
    buffers = None
    for line in lines[1:]:
        try:
            entry = json.loads(line)
            if "skip" in entry:
                start, count = entry["skip"]
                skipped.update(range(start, start + count))
            elif "buffers" in entry:
                buffers = str(entry["buffers"])
            else:
                metadata.update((int(n), dict(md)) for n, md in entry["meta"])
        except (ValueError, KeyError, TypeError):
            break  # a line cut short by the crash ends the journal
    return JournalContents(settings, skipped, metadata, head, buffers)
