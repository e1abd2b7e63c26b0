"""Run and logged-model artifacts, kept through Django's storage API.

Files live in `STORAGES["artifacts"]` (settings): a FileSystemStorage under var/artifacts by
default, any django-storages backend (S3 and the like) by setting. A run's files are stored
under `runs/<run id>/`, a logged model's under `models/<model id>/`: keys never name the
experiment, so moving a run to another experiment loses nothing.

Bytes travel in chunks both ways: an upload is spooled to a temporary file (memory only for
the first MiB), checked against `TRAINMON_ARTIFACT_MAX_BYTES` as it arrives, and handed to the
storage only once complete, so a refused upload leaves nothing behind.
"""

from __future__ import annotations

import posixpath
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Protocol

from django.conf import settings
from django.core.files import File
from django.core.files.storage import Storage, storages

ARTIFACTS_STORAGE = "artifacts"
CHUNK_BYTES = 1024 * 1024
# An upload is held in memory up to this size, then in a temporary file.
SPOOL_MEMORY_BYTES = 1024 * 1024
# The job page lists at most this many files (the API lists one directory at a time).
PAGE_LIST_MAX_FILES = 500


class ArtifactPathError(ValueError):
    """A path that would leave its run's or model's folder, or that no storage can name."""


class ArtifactTooLargeError(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(
            f"An artifact may be at most {limit:,} bytes (TRAINMON_ARTIFACT_MAX_BYTES)."
        )
        self.limit = limit


class Readable(Protocol):
    def read(self, size: int = ..., /) -> bytes: ...


@dataclass(frozen=True)
class ArtifactEntry:
    path: str  # relative to the listed folder (API) or to the run's root (page)
    is_dir: bool
    file_size: int | None


def artifact_storage() -> Storage:
    return storages[ARTIFACTS_STORAGE]


def artifact_max_bytes() -> int:
    return int(settings.TRAINMON_ARTIFACT_MAX_BYTES)


def clean_relative_path(path: str) -> str:
    """`path` without `.` segments or a trailing `/`; `..`, absolute paths, odd bytes refused."""
    if path.startswith(("/", "\\")) or "\\" in path or "\x00" in path:
        raise ArtifactPathError(f"Artifact paths are relative and use '/': {path!r}.")
    if any(ord(char) < 32 for char in path):
        raise ArtifactPathError("Artifact paths may not hold control characters.")
    parts = path.removesuffix("/").split("/") if path else []
    if "" in parts:
        # `a//b`: an absolute path pasted after a folder (`artifacts//etc/passwd`).
        raise ArtifactPathError(f"Artifact paths have no empty segments: {path!r}.")
    parts = [part for part in parts if part != "."]
    if ".." in parts:
        raise ArtifactPathError(f"Artifact paths may not contain '..': {path!r}.")
    return "/".join(parts)


def run_root(run_uuid: str) -> str:
    return f"runs/{run_uuid}"


def model_root(model_id: str) -> str:
    return f"models/{model_id}"


def artifact_save(*, root: str, path: str, stream: Readable, max_bytes: int) -> int:
    """Store the bytes `stream` yields as `root/path` (replacing any earlier file); their size.

    Raises ArtifactTooLargeError past `max_bytes`, with nothing stored.
    """
    relative = clean_relative_path(path)
    if not relative:
        raise ArtifactPathError("An upload needs a file name.")
    key = f"{root}/{relative}"
    size = 0
    with tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY_BYTES) as spool:
        while chunk := stream.read(CHUNK_BYTES):
            size += len(chunk)
            if size > max_bytes:
                raise ArtifactTooLargeError(max_bytes)
            spool.write(chunk)
        spool.seek(0)
        storage = artifact_storage()
        # MLflow overwrites on a second upload; backends that would rename instead get the
        # old file removed first (FileSystemStorage is configured with allow_overwrite).
        if storage.exists(key):
            storage.delete(key)
        storage.save(key, File(spool, name=posixpath.basename(key)))
    return size


def artifact_list(*, root: str, path: str = "") -> list[ArtifactEntry]:
    """One folder's entries, named relative to it; a missing folder or a file lists nothing."""
    relative = clean_relative_path(path)
    folder = f"{root}/{relative}" if relative else root
    storage = artifact_storage()
    try:
        dirs, files = storage.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return []
    entries = [ArtifactEntry(name, True, None) for name in sorted(dirs)]
    entries += [
        ArtifactEntry(name, False, storage.size(f"{folder}/{name}")) for name in sorted(files)
    ]
    return entries


def artifact_walk(
    *, root: str, limit: int = PAGE_LIST_MAX_FILES
) -> tuple[list[ArtifactEntry], bool]:
    """Every file under `root`, by path from it, at most `limit`; and whether some were left out."""
    found: list[ArtifactEntry] = []

    def walk(prefix: str) -> Iterator[ArtifactEntry]:
        for entry in artifact_list(root=root, path=prefix):
            path = f"{prefix}/{entry.path}" if prefix else entry.path
            if entry.is_dir:
                yield from walk(path)
            else:
                yield ArtifactEntry(path, False, entry.file_size)

    for entry in walk(""):
        if len(found) == limit:
            return found, True
        found.append(entry)
    return found, False


def artifact_open(*, root: str, path: str) -> IO[bytes]:
    """The stored file, open for reading; FileNotFoundError when there is none."""
    relative = clean_relative_path(path)
    if not relative:
        raise FileNotFoundError(root)
    key = f"{root}/{relative}"
    storage = artifact_storage()
    if not storage.exists(key):
        raise FileNotFoundError(key)
    try:
        handle: IO[bytes] = storage.open(key, "rb")
    except IsADirectoryError:
        raise FileNotFoundError(key) from None
    return handle


def artifact_delete_all(*, root: str) -> None:
    """Remove every file under `root` (a deleted run's or model's)."""
    storage = artifact_storage()
    for entry in artifact_walk(root=root, limit=10**9)[0]:
        storage.delete(f"{root}/{entry.path}")
