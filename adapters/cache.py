"""The local cache of resolved adapters: `<root>/<name>/<version>-<digest12>/`.

- Atomic: an entry is downloaded into `<root>/.tmp-<uuid>` and renamed into place, so a reader
  sees a complete directory or none.
- Once: a lock per entry (`flock`, which also excludes threads of one process because every
  caller opens its own descriptor) makes concurrent resolvers of one version, in any number of
  threads and processes, download it once.
- Checked: downloads and entries found on disk are verified against the registered content
  digest before use; a corrupt entry is replaced.
- Bounded: after each use, least recently used entries (by the entry directory's mtime, touched
  on every hit) are removed until the cache fits `max_bytes`; the entry just returned is kept.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from gemlora.adapters.errors import AdapterIntegrityError
from gemlora.adapters.metadata import content_digest

logger = logging.getLogger(__name__)

ENTRY_PATTERN = re.compile(r"(?P<version>\d+)-(?P<digest>[0-9a-f]{12})")
# Temp and trash directories older than this belong to a process that died mid-way.
STALE_AFTER_S = 3600

Download = Callable[[Path], None]


@dataclass(frozen=True)
class CacheEntry:
    name: str
    version: int
    digest12: str
    path: Path
    size_bytes: int
    last_used: float


class AdapterCache:
    """Verified local copies of adapter versions under `root`, at most `max_bytes` in all."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self._verified: set[Path] = set()
        self._verified_lock = threading.Lock()

    def entry_path(self, name: str, version: int, digest: str) -> Path:
        return self.root / name / f"{version}-{digest[:12]}"

    def get(self, name: str, version: int, digest: str, download: Download) -> Path:
        """The local directory of one adapter version; `download(empty_dir)` fetches its files
        when the cache has no valid copy. Raises `AdapterIntegrityError` when the downloaded
        files do not have `digest`."""
        path = self.entry_path(name, version, digest)
        with self._entry_lock(path):
            if not self._usable(path, digest):
                self._fill(path, digest, download)
            os.utime(path)
        self.evict(keep=path)
        return path

    def entries(self) -> list[CacheEntry]:
        found = []
        for name_dir in _subdirs(self.root):
            if name_dir.name.startswith("."):
                continue  # temp dirs being filled, trash, locks
            for path in _subdirs(name_dir):
                if match := ENTRY_PATTERN.fullmatch(path.name):
                    with contextlib.suppress(FileNotFoundError):  # removed meanwhile
                        found.append(_entry(path, match))
        return found

    def total_bytes(self) -> int:
        return sum(entry.size_bytes for entry in self.entries())

    def evict(self, keep: Path | None = None) -> list[Path]:
        """Remove least recently used entries until the cache fits; returns what was removed.
        Entries another caller is using right now are left alone."""
        with _flock(self.root / ".locks" / "evict.lock", blocking=False) as acquired:
            if not acquired:
                return []  # another process is evicting
            self._remove_stale()
            entries = sorted(self.entries(), key=lambda entry: entry.last_used)
            total = sum(entry.size_bytes for entry in entries)
            removed = []
            for entry in entries:
                if total <= self.max_bytes:
                    break
                if entry.path != keep and self._discard_if_idle(entry.path):
                    total -= entry.size_bytes
                    removed.append(entry.path)
            if total > self.max_bytes:
                logger.warning(
                    "adapter cache %s holds %d bytes, over its cap of %d: the entries left are "
                    "in use",
                    self.root,
                    total,
                    self.max_bytes,
                )
            return removed

    # --- one entry ----------------------------------------------------------------------------

    def _usable(self, path: Path, digest: str) -> bool:
        if not path.is_dir():
            return False
        with self._verified_lock:
            if path in self._verified:
                return True
        if content_digest(path) == digest:
            with self._verified_lock:
                self._verified.add(path)
            return True
        logger.warning("cached adapter %s does not match its digest; downloading it again", path)
        self._discard(path)
        return False

    def _fill(self, path: Path, digest: str, download: Download) -> None:
        temp = self.root / f".tmp-{uuid.uuid4().hex}"
        temp.mkdir(parents=True)
        try:
            download(temp)
            found = content_digest(temp)
            if found != digest:
                raise AdapterIntegrityError(
                    f"downloaded files of {path.parent.name} version {path.name.split('-')[0]} "
                    f"have digest {found[:12]}, but the registry recorded {digest[:12]}"
                )
            path.parent.mkdir(parents=True, exist_ok=True)
            temp.rename(path)
        finally:
            shutil.rmtree(temp, ignore_errors=True)  # only still there when something failed
        with self._verified_lock:
            self._verified.add(path)

    def _discard_if_idle(self, path: Path) -> bool:
        with self._entry_lock(path, blocking=False) as acquired:
            if acquired and path.is_dir():
                self._discard(path)
            return acquired

    def _discard(self, path: Path) -> None:
        # Renamed away first, so nobody ever sees a half-deleted entry.
        trash = self.root / f".trash-{uuid.uuid4().hex}"
        path.rename(trash)
        shutil.rmtree(trash, ignore_errors=True)
        with self._verified_lock:
            self._verified.discard(path)

    def _entry_lock(self, path: Path, blocking: bool = True):
        return _flock(self.root / ".locks" / f"{path.parent.name}--{path.name}.lock", blocking)

    def _remove_stale(self) -> None:
        cutoff = time.time() - STALE_AFTER_S
        for path in [*self.root.glob(".tmp-*"), *self.root.glob(".trash-*")]:
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime < cutoff:
                    shutil.rmtree(path, ignore_errors=True)


def _subdirs(directory: Path) -> list[Path]:
    """The directories in `directory`, none if it is gone. Other threads and processes fill,
    rename and remove directories here all the time: a path `glob` walks into can vanish
    under it (pathlib then raises)."""
    try:
        with os.scandir(directory) as found:
            return [Path(entry.path) for entry in found if entry.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return []


def _entry(path: Path, match: re.Match) -> CacheEntry:
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return CacheEntry(
        name=path.parent.name,
        version=int(match["version"]),
        digest12=match["digest"],
        path=path,
        size_bytes=size,
        last_used=path.stat().st_mtime,
    )


@contextlib.contextmanager
def _flock(lock_file: Path, blocking: bool = True) -> Iterator[bool]:
    """Hold an exclusive lock on `lock_file`; yields False when `blocking` is off and it is held
    elsewhere."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with lock_file.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
