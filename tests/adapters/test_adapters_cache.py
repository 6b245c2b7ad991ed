"""The adapter cache: atomic fills, one download under concurrency (threads and processes),
integrity checks, LRU eviction under a size cap."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from gemlora.adapters import AdapterCache, AdapterIntegrityError, content_digest


def make_adapter(directory: Path, payload: bytes) -> Path:
    directory.mkdir(parents=True)
    (directory / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    (directory / "adapter_model.safetensors").write_bytes(payload)
    return directory


class Source:
    """An adapter to serve from, and a download function that counts its calls."""

    def __init__(self, directory: Path, delay_s: float = 0.0) -> None:
        self.directory = directory
        self.digest = content_digest(directory)
        self.delay_s = delay_s
        self.calls = 0
        self._lock = threading.Lock()

    def download(self, destination: Path) -> None:
        with self._lock:
            self.calls += 1
        for path in self.directory.iterdir():
            shutil.copy(path, destination / path.name)
            time.sleep(self.delay_s)


@pytest.fixture
def source(tmp_path) -> Source:
    return Source(make_adapter(tmp_path / "source", b"x" * 1000))


def test_a_version_is_downloaded_once_then_served_from_the_cache(tmp_path, source):
    cache = AdapterCache(tmp_path / "cache", max_bytes=10**6)
    first = cache.get("bot", 1, source.digest, source.download)
    second = cache.get("bot", 1, source.digest, source.download)
    assert first == second == tmp_path / "cache" / "bot" / f"1-{source.digest[:12]}"
    assert source.calls == 1
    assert content_digest(first) == source.digest


def test_concurrent_threads_download_once(tmp_path, source):
    source.delay_s = 0.2
    cache = AdapterCache(tmp_path / "cache", max_bytes=10**6)
    paths: list[Path] = []

    def resolve_once() -> None:
        paths.append(cache.get("bot", 1, source.digest, source.download))

    threads = [threading.Thread(target=resolve_once) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert source.calls == 1
    assert len(set(paths)) == 1 and len(paths) == 8


def test_many_versions_filled_at_once_all_resolve(tmp_path):
    """Entries and temp dirs appear and vanish while other threads list the cache to evict
    (what an engine does when many new adapters are first asked for at once): none fails."""
    from concurrent.futures import ThreadPoolExecutor

    sources = [Source(make_adapter(tmp_path / f"source-{i}", bytes([i]) * 1000)) for i in range(32)]
    cache = AdapterCache(tmp_path / "cache", max_bytes=10**6)

    def resolve(index: int) -> Path:
        source = sources[index]
        return cache.get(f"bot-{index}", 1, source.digest, source.download)

    with ThreadPoolExecutor(16) as pool:
        paths = list(pool.map(resolve, range(len(sources))))
    assert all(content_digest(path) == s.digest for path, s in zip(paths, sources, strict=True))


PROCESS_SCRIPT = """
import shutil, sys, time
from pathlib import Path
from gemlora.adapters import AdapterCache

root, source, digest, log = sys.argv[1:]

def download(destination):
    with open(log, "a") as f:
        f.write("download\\n")
    time.sleep(0.5)
    for path in Path(source).iterdir():
        shutil.copy(path, destination / path.name)

print(AdapterCache(Path(root), 10**6).get("bot", 1, digest, download))
"""


def test_concurrent_processes_download_once(tmp_path, source):
    log = tmp_path / "downloads.log"
    args = [str(tmp_path / "cache"), str(source.directory), source.digest, str(log)]
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", PROCESS_SCRIPT, *args], stdout=subprocess.PIPE, text=True
        )
        for _ in range(3)
    ]
    outputs = {process.communicate(timeout=60)[0].strip() for process in processes}
    assert [p.returncode for p in processes] == [0, 0, 0]
    assert outputs == {str(tmp_path / "cache" / "bot" / f"1-{source.digest[:12]}")}
    assert log.read_text().splitlines() == ["download"]


def test_an_entry_appears_whole_or_not_at_all(tmp_path, source):
    source.delay_s = 0.3
    cache = AdapterCache(tmp_path / "cache", max_bytes=10**6)
    entry = cache.entry_path("bot", 1, source.digest)
    filling = threading.Thread(target=cache.get, args=("bot", 1, source.digest, source.download))
    filling.start()
    time.sleep(0.15)  # one file copied, one to go
    assert not entry.exists()
    assert len(list((tmp_path / "cache").glob(".tmp-*"))) == 1
    filling.join()
    assert sorted(p.name for p in entry.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    assert list((tmp_path / "cache").glob(".tmp-*")) == []


def test_a_failed_download_leaves_nothing_behind(tmp_path, source):
    cache = AdapterCache(tmp_path / "cache", max_bytes=10**6)

    def broken(destination: Path) -> None:
        (destination / "adapter_config.json").write_text("{}")
        raise ConnectionError("connection reset mid-download")

    with pytest.raises(ConnectionError):
        cache.get("bot", 1, source.digest, broken)
    assert not cache.entry_path("bot", 1, source.digest).exists()
    assert list((tmp_path / "cache").glob(".tmp-*")) == []
    assert cache.get("bot", 1, source.digest, source.download).is_dir()


def test_a_download_with_the_wrong_digest_is_refused(tmp_path, source):
    cache = AdapterCache(tmp_path / "cache", max_bytes=10**6)
    other = Source(make_adapter(tmp_path / "other", b"y" * 1000))
    with pytest.raises(AdapterIntegrityError) as error:
        cache.get("bot", 1, source.digest, other.download)
    assert str(error.value) == (
        f"downloaded files of bot version 1 have digest {other.digest[:12]}, but the registry "
        f"recorded {source.digest[:12]}"
    )
    assert cache.entries() == []


def test_a_corrupted_entry_is_detected_and_replaced(tmp_path, source):
    path = AdapterCache(tmp_path / "cache", 10**6).get("bot", 1, source.digest, source.download)
    (path / "adapter_model.safetensors").write_bytes(b"z" * 1000)  # bit rot, or a bad copy

    restarted = AdapterCache(tmp_path / "cache", 10**6)
    assert restarted.get("bot", 1, source.digest, source.download) == path
    assert source.calls == 2
    assert content_digest(path) == source.digest


def test_least_recently_used_entries_are_evicted_over_the_cap(tmp_path):
    sources = [Source(make_adapter(tmp_path / f"s{i}", bytes([i]) * 1000)) for i in range(3)]
    entry_size = sum(f.stat().st_size for f in sources[0].directory.iterdir())
    cache = AdapterCache(tmp_path / "cache", max_bytes=int(entry_size * 2.5))

    def use(version: int) -> Path:
        path = cache.get("bot", version, sources[version].digest, sources[version].download)
        time.sleep(0.02)  # distinct access times
        return path

    zero, one = use(0), use(1)
    use(0)  # 1 is now the least recently used
    two = use(2)
    assert sorted(e.path for e in cache.entries()) == sorted([zero, two])
    assert not one.exists()
    assert cache.total_bytes() <= cache.max_bytes


def test_the_entry_just_returned_is_kept_even_over_the_cap(tmp_path, source):
    cache = AdapterCache(tmp_path / "cache", max_bytes=10)
    old = cache.get("bot", 1, source.digest, source.download)
    other = Source(make_adapter(tmp_path / "other", b"y" * 1000))
    new = cache.get("bot", 2, other.digest, other.download)
    assert new.is_dir() and not old.exists()
    assert [e.version for e in cache.entries()] == [2]


def test_stale_temp_dirs_of_dead_processes_are_removed(tmp_path, source):
    cache = AdapterCache(tmp_path / "cache", max_bytes=10**6)
    stale = tmp_path / "cache" / ".tmp-dead"
    stale.mkdir(parents=True)
    os.utime(stale, (0, 0))
    cache.get("bot", 1, source.digest, source.download)
    assert not stale.exists()
