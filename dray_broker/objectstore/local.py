"""A local directory as object store (file:///path): the embedded default.

Each key is a file under the root. Readers never see a partial object, and an acknowledged put survives a crash
of the process or of the machine.

A create-only put (the WAL writer's) costs one journal commit:
1. the bytes go into an anonymous file in the key's directory (O_TMPFILE; a named temp file where the file system
   has none) with O_DIRECT: from a reused page-aligned buffer straight to the disk, padded to a block and cut to
   size after. Not through the page cache: the broker caches recent chunks itself, and on the VMs measured the
   kernel's copy into new page-cache pages was half of the broker's CPU per produced MB (2.5 ms/MB buffered, 0.25
   ms/MB direct, writing new files without deleting any). Where O_DIRECT is refused, the bytes are written to the
   page cache and back to the disk without a commit (sync_file_range: data only);
2. link(2) gives the file its name: it fails if the key exists, so the existence check and the write are one
   atomic step, and the name appears with every byte written (concurrent readers see all or nothing);
3. fsync of the file makes the name durable with its size and blocks.
Why this is enough on Linux: POSIX only promises that a directory fsync makes a new name durable, but on the
journaling file systems a broker runs on, link(2) changes the file's own inode (its link count) in the same
transaction as the directory entry, and fsync of the file commits that transaction: ext4 commits the inode's last
transaction (i_sync_tid), XFS forces the log up to the inode's last change, btrfs logs the inode's new names. A
directory fsync would cost a second commit for nothing. Step 1 makes a crash at any point safe: the name is
committed in a transaction no older than the one that allocated the blocks, whose data was already on the disk
(the commit's cache flush comes after it). So after a crash a key either does not exist or holds all its bytes;
writing after the link instead would let a commit (another put's fsync) publish the name of an empty file, and an
fdatasync before the link would be a second commit. Where sync_file_range is missing it is an fdatasync.

An overwrite (create_only=False) writes and fsyncs a temp file, renames it over the key and fsyncs the directory.
All file I/O runs in a small thread pool owned by the store, so the event loop never waits for the disk. One
read is tried on the event loop first: get_writable (the fetch path's chunk reads) copies a range the page cache
holds whole there (preadv with RWF_NOWAIT, which fails rather than wait for the disk; then the pool reads it), as
a hop to the pool costs more than the copy.

Limits of the layout: a key cannot be both an object and a "directory" of other keys ('a' and 'a/b'), and key
segments may not be empty, '.', '..', or start with the temp-file prefix.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import mmap
import os
import stat
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence, TypeVar

from dray_broker.objectstore.base import (
    Buffer,
    ObjectExistsError,
    ObjectInfo,
    ObjectNotFoundError,
    ObjectStore,
    ObjectStoreError,
)

T = TypeVar("T")

TMP_PREFIX = ".tmp-"
_O_DIRECT = getattr(os, "O_DIRECT", 0)
# O_DIRECT wants offsets, lengths and buffer addresses in multiples of the device's logical block: 4 KiB covers
# 512-byte and 4 KiB devices.
_DIRECT_ALIGN = 4096
_POOLED_BYTES = 64 * 1024 * 1024  # aligned buffers kept for the next direct writes
_RWF_NOWAIT = getattr(os, "RWF_NOWAIT", None)
_IOV_MAX = 1024
try:
    _IOV_MAX = max(16, min(os.sysconf("SC_IOV_MAX"), 1024))
except (AttributeError, ValueError, OSError):  # pragma: no cover - not Linux
    pass


def check_key(key: str) -> str:
    """Validate an object key: a relative '/'-separated path without empty, '.' or '..' segments."""
    if not isinstance(key, str) or not key:
        raise ValueError(f"invalid object key {key!r}: empty")
    if key.startswith("/") or "\\" in key or "\0" in key:
        raise ValueError(f"invalid object key {key!r}: must be a relative '/'-separated path")
    for part in key.split("/"):
        if part in ("", ".", ".."):
            raise ValueError(f"invalid object key {key!r}: empty, '.' or '..' segment")
        if part.startswith(TMP_PREFIX):
            raise ValueError(f"invalid object key {key!r}: segment starts with reserved {TMP_PREFIX!r}")
    return key


def _as_buffers(data: Buffer | Sequence[Buffer]) -> list[memoryview]:
    if isinstance(data, (bytes, bytearray, memoryview)):
        views = [memoryview(data)]
    else:
        views = [memoryview(b) for b in data]
    out = []
    for v in views:
        if v.ndim != 1 or v.format != "B" or not v.c_contiguous:
            v = v.cast("B") if v.c_contiguous else memoryview(v.tobytes())
        if v.nbytes:
            out.append(v)
    return out


def _write_all(fd: int, bufs: list[memoryview]) -> None:
    """Write every buffer with writev, resuming after short writes, without joining them."""
    i = 0
    while i < len(bufs):
        batch = bufs[i : i + _IOV_MAX]
        n = os.writev(fd, batch)
        # Skip fully written buffers; trim the partially written one.
        while n > 0:
            size = bufs[i].nbytes
            if n >= size:
                n -= size
                i += 1
            else:
                bufs[i] = bufs[i][n:]
                n = 0


class _AlignedBuffers:
    """Page-aligned buffers (anonymous mmaps) for direct writes, reused: new memory costs a page fault per page."""

    def __init__(self, keep_bytes: int) -> None:
        self._keep_bytes = keep_bytes
        self._free: list[mmap.mmap] = []
        self._lock = threading.Lock()

    def take(self, size: int) -> mmap.mmap:
        with self._lock:
            for i, buf in enumerate(self._free):
                if len(buf) >= size:
                    return self._free.pop(i)
        return mmap.mmap(-1, max(size, 1024 * 1024))

    def give(self, buf: mmap.mmap) -> None:
        with self._lock:
            if sum(map(len, self._free)) + len(buf) <= self._keep_bytes:
                self._free.append(buf)
                return
        try:
            buf.close()
        except BufferError:  # a view of it is still alive somewhere: it goes when that does
            pass


def _write_direct(fd: int, bufs: list[memoryview], aligned: _AlignedBuffers) -> None:
    """Copy the buffers into an aligned one and write it with one pwrite, padded to the block size; then cut the
    file to the real size."""
    size = sum(b.nbytes for b in bufs)
    padded = -(-size // _DIRECT_ALIGN) * _DIRECT_ALIGN
    buf = aligned.take(padded)
    try:
        pos = 0
        for b in bufs:
            buf[pos : pos + b.nbytes] = b
            pos += b.nbytes
        written = 0
        while written < padded:
            n = os.pwrite(fd, memoryview(buf)[written:padded], written)
            if n <= 0:
                raise OSError(errno.EIO, "direct write made no progress")
            written += n
    finally:
        aligned.give(buf)
    if padded != size:
        os.ftruncate(fd, size)


_SYNC_FILE_RANGE_WRITE_AND_WAIT = 1 | 2 | 4  # WAIT_BEFORE | WRITE | WAIT_AFTER
try:
    _sync_file_range = ctypes.CDLL(None, use_errno=True).sync_file_range
    _sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
except (AttributeError, OSError):  # pragma: no cover - not Linux/glibc
    _sync_file_range = None


def _read_into_bytearray(fd: int, start: int, length: int) -> bytearray:
    buf = bytearray(length)
    with memoryview(buf) as view:
        pos = 0
        while pos < length:
            n = os.preadv(fd, [view[pos:]], start + pos)
            if not n:
                break  # truncated underneath us (cannot happen with atomic puts)
            pos += n
    return buf if pos == length else buf[:pos]


def _write_back(fd: int) -> None:
    """Write the file's data to the disk and wait, without a journal commit (an fdatasync where unsupported)."""
    if _sync_file_range is not None and _sync_file_range(fd, 0, 0, _SYNC_FILE_RANGE_WRITE_AND_WAIT) == 0:
        return
    os.fdatasync(fd)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalObjectStore(ObjectStore):
    parallel_puts = 4  # the file system commits concurrent fsyncs together

    def __init__(self, root: str | os.PathLike[str], *, max_workers: int = 8, fsync: bool = True) -> None:
        self.root = os.path.abspath(os.fspath(root))
        self._fsync = fsync
        self._max_workers = max_workers
        self._executor: ThreadPoolExecutor | None = None
        self._tmpfile = hasattr(os, "O_TMPFILE") and os.path.isdir("/proc/self/fd")
        self._direct = bool(_O_DIRECT) and fsync  # without fsync nothing waits for the disk: the page cache is quicker
        self._aligned = _AlignedBuffers(_POOLED_BYTES)
        os.makedirs(self.root, exist_ok=True)

    def __repr__(self) -> str:
        return f"LocalObjectStore({self.root!r})"

    # -- plumbing -----------------------------------------------------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self._max_workers, thread_name_prefix="dray-objstore")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    def _path(self, key: str) -> str:
        return os.path.join(self.root, *check_key(key).split("/"))

    def _makedirs(self, path: str) -> None:
        """Create path and its missing parents under root, fsyncing each parent that gained an entry."""
        if os.path.isdir(path):
            return
        missing = []
        p = path
        while not os.path.isdir(p):
            missing.append(p)
            parent = os.path.dirname(p)
            if parent == p:
                break
            p = parent
        for d in reversed(missing):
            try:
                os.mkdir(d)
            except FileExistsError:
                if not os.path.isdir(d):
                    raise
                continue
            if self._fsync:
                _fsync_dir(os.path.dirname(d))

    # -- blocking implementations -------------------------------------------------------------------------------

    def _put_sync(self, key: str, bufs: list[memoryview], create_only: bool) -> None:
        path = self._path(key)
        directory = os.path.dirname(path)
        try:
            self._makedirs(directory)
        except (FileExistsError, NotADirectoryError) as e:
            raise ObjectStoreError(f"cannot create {key!r}: a parent path is an object") from e
        if create_only:
            self._create_sync(key, path, directory, bufs)
        else:
            self._replace_sync(key, path, directory, bufs)

    def _create_sync(self, key: str, path: str, directory: str, bufs: list[memoryview]) -> None:
        """Write, link into place (atomic create-only), one fsync: see the module's docstring."""
        if self._direct:
            try:
                self._create(key, path, directory, bufs, direct=True)
                return
            except OSError as e:
                if e.errno != errno.EINVAL:
                    raise
                # The file system refuses O_DIRECT, or its alignment: through the page cache from now on.
                self._direct = False
        self._create(key, path, directory, bufs, direct=False)

    def _create(self, key: str, path: str, directory: str, bufs: list[memoryview], *, direct: bool) -> None:
        fd, tmp = self._open_temp(directory, _O_DIRECT if direct else 0)
        try:
            if direct:
                _write_direct(fd, bufs, self._aligned)
            else:
                _write_all(fd, bufs)
                if self._fsync:
                    _write_back(fd)
            try:
                if tmp is None:  # an anonymous file gets its first name through its /proc/self/fd link
                    # A src_dir_fd (ignored: the path is absolute) makes Python call linkat(2) with
                    # AT_SYMLINK_FOLLOW; link(2) would try to link the /proc symlink itself.
                    os.link(f"/proc/self/fd/{fd}", path, src_dir_fd=fd, follow_symlinks=True)
                else:
                    os.link(tmp, path)
            except FileExistsError:
                raise ObjectExistsError(key) from None
            finally:
                if tmp is not None:
                    os.unlink(tmp)
            if self._fsync:
                os.fsync(fd)
        finally:
            os.close(fd)

    def _open_temp(self, directory: str, flags: int) -> tuple[int, str | None]:
        """An anonymous file (O_TMPFILE) in directory, or a named temp file where that is not supported."""
        if self._tmpfile:
            try:
                return os.open(directory, os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC | flags, 0o644), None
            except OSError as e:
                # With O_DIRECT, EINVAL may be O_DIRECT's refusal: the caller retries without it.
                if e.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL) or (flags and e.errno == errno.EINVAL):
                    raise
                self._tmpfile = False
        tmp = os.path.join(directory, f"{TMP_PREFIX}{uuid.uuid4().hex}")
        return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | flags, 0o644), tmp

    def _replace_sync(self, key: str, path: str, directory: str, bufs: list[memoryview]) -> None:
        tmp = os.path.join(directory, f"{TMP_PREFIX}{uuid.uuid4().hex}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            try:
                _write_all(fd, bufs)
                if self._fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            if os.path.isdir(path):
                raise ObjectStoreError(f"cannot overwrite {key!r}: it is a prefix of other keys")
            os.replace(tmp, path)
        finally:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass  # renamed onto the key
        if self._fsync:
            _fsync_dir(directory)

    def _get_sync(self, key: str, start: int, end: int | None, writable: bool = False) -> bytes | bytearray:
        path = self._path(key)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            raise ObjectNotFoundError(key) from None
        except IsADirectoryError:  # pragma: no cover - O_RDONLY on a directory succeeds on Linux
            raise ObjectNotFoundError(key) from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise ObjectNotFoundError(key)
            stop = st.st_size if end is None else min(end, st.st_size)
            if stop <= start:
                return bytearray() if writable else b""
            if writable:
                return _read_into_bytearray(fd, start, stop - start)
            chunks = []
            pos, remaining = start, stop - start
            while remaining:
                chunk = os.pread(fd, remaining, pos)
                if not chunk:
                    break  # truncated underneath us (cannot happen with atomic puts)
                chunks.append(chunk)
                pos += len(chunk)
                remaining -= len(chunk)
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
        finally:
            os.close(fd)

    def _get_cached_sync(self, key: str, start: int, end: int) -> bytearray | None:
        """The range if the page cache holds all of it (RWF_NOWAIT: the read never waits for the disk), else None
        (and any error is left for the thread pool's read to report)."""
        if _RWF_NOWAIT is None:
            return None
        try:
            fd = os.open(self._path(key), os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            stop = min(end, os.fstat(fd).st_size)
            if stop <= start:
                return None
            buf = bytearray(stop - start)
            n = os.preadv(fd, [buf], start, _RWF_NOWAIT)
        except OSError:  # EAGAIN (not cached), EOPNOTSUPP (a file system without it), ...
            return None
        finally:
            os.close(fd)
        return buf if n == len(buf) else None

    def _head_sync(self, key: str) -> ObjectInfo | None:
        try:
            st = os.stat(self._path(key))
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        return ObjectInfo(key=key, size=st.st_size, last_modified=st.st_mtime)

    def _list_sync(self, prefix: str) -> list[ObjectInfo]:
        # Start at the deepest directory the prefix fully names, then filter by the full prefix.
        base_parts = prefix.split("/")[:-1]
        if any(p in ("", ".", "..") for p in base_parts) or prefix.startswith("/"):
            return []  # no valid key can start with such a prefix
        out: list[ObjectInfo] = []
        stack = [("/".join(base_parts), os.path.join(self.root, *base_parts))]
        while stack:
            rel, directory = stack.pop()
            try:
                it = os.scandir(directory)
            except (FileNotFoundError, NotADirectoryError):
                continue
            with it:
                for entry in it:
                    if entry.name.startswith(TMP_PREFIX):
                        continue
                    key = f"{rel}/{entry.name}" if rel else entry.name
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            if key.startswith(prefix) or prefix.startswith(key + "/"):
                                stack.append((key, entry.path))
                            continue
                        if not key.startswith(prefix) or not entry.is_file(follow_symlinks=False):
                            continue
                        st = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue  # deleted while listing
                    out.append(ObjectInfo(key=key, size=st.st_size, last_modified=st.st_mtime))
        out.sort(key=lambda info: info.key)
        return out

    def _delete_sync(self, key: str) -> None:
        path = self._path(key)
        try:
            os.unlink(path)
        except (FileNotFoundError, NotADirectoryError):
            return
        except (IsADirectoryError, PermissionError) as e:
            if os.path.isdir(path):
                return  # a prefix of other keys, not an object
            raise ObjectStoreError(f"cannot delete {key!r}: {e}") from e
        if self._fsync:
            _fsync_dir(os.path.dirname(path))

    # -- the interface ------------------------------------------------------------------------------------------

    async def put(self, key: str, data: Buffer | Sequence[Buffer], *, create_only: bool = True) -> None:
        check_key(key)
        bufs = _as_buffers(data)
        try:
            await self._run(self._put_sync, key, bufs, create_only)
        except ObjectStoreError:
            raise
        except OSError as e:
            raise ObjectStoreError(f"put {key!r} failed: {e}") from e

    async def get(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        check_key(key)
        if start < 0 or (end is not None and end < 0):
            raise ValueError(f"invalid range [{start}, {end})")
        try:
            return await self._run(self._get_sync, key, start, end)
        except ObjectStoreError:
            raise
        except OSError as e:
            raise ObjectStoreError(f"get {key!r} failed: {e}") from e

    async def get_writable(self, key: str, start: int, end: int) -> bytearray:
        """Read straight into the bytearray. Bytes the page cache holds (a recently written WAL object) are copied
        on the event loop: for a chunk that takes tens of microseconds, less than a hop to the thread pool."""
        check_key(key)
        if start < 0 or end < 0:
            raise ValueError(f"invalid range [{start}, {end})")
        cached = self._get_cached_sync(key, start, end)
        if cached is not None:
            return cached
        try:
            return await self._run(self._get_sync, key, start, end, True)
        except ObjectStoreError:
            raise
        except OSError as e:
            raise ObjectStoreError(f"get {key!r} failed: {e}") from e

    async def head(self, key: str) -> ObjectInfo | None:
        check_key(key)
        try:
            return await self._run(self._head_sync, key)
        except OSError as e:
            raise ObjectStoreError(f"head {key!r} failed: {e}") from e

    async def list(self, prefix: str = "") -> list[ObjectInfo]:
        try:
            return await self._run(self._list_sync, prefix)
        except OSError as e:
            raise ObjectStoreError(f"list {prefix!r} failed: {e}") from e

    async def delete(self, key: str) -> None:
        check_key(key)
        try:
            await self._run(self._delete_sync, key)
        except ObjectStoreError:
            raise
        except OSError as e:
            raise ObjectStoreError(f"delete {key!r} failed: {e}") from e

    async def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            # Running operations finish in their threads; do not block the loop waiting for them.
            executor.shutdown(wait=False)

    def cleanup_temp_files(self, older_than: float = 3600.0) -> int:
        """Remove temp files left by puts interrupted by a crash (blocking; call at startup). Returns the count."""
        import time

        cutoff = time.time() - older_than
        removed = 0
        for directory, _dirs, files in os.walk(self.root):
            for name in files:
                if name.startswith(TMP_PREFIX):
                    path = os.path.join(directory, name)
                    try:
                        if os.stat(path).st_mtime < cutoff:
                            os.unlink(path)
                            removed += 1
                    except FileNotFoundError:
                        pass
        return removed
