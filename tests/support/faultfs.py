"""``CrashFS``: a ``FileOps`` that models what a power loss would leave on disk.

SIGKILL never loses the page cache, so it cannot test power loss. ``CrashFS`` performs every
operation on the real files (the storage reads them back with ``os.pread`` as usual) and
keeps, beside them, a model of the disk after a power cut (SQLite ``test6.c``, RocksDB
``FaultInjectionTestFS``, ALICE):

* per file (an object, so a rename moves it and an unlink forgets only the name): the bytes
  that were durable at its last ``fdatasync`` and the current bytes;
* per directory: the entries (name -> file) durable at its last ``fsync_dir``, and the
  directory operations (create, rename, unlink) made since, in order.

``crash_image(dest, tail_mode, rng, dir_ops)`` writes the disk a power cut would leave: each
name of the durable directory (plus any chosen subset of the pending directory operations),
with its file's durable bytes followed by the unsynced tail either dropped, kept, cut to a
random prefix, zero-filled or garbage-filled (ALICE's model of an append), or with a hole:
one page of the unsynced tail lost (zeros up to its page boundary) and the pages after it
kept, as writeback may order the pages of one multi-page write.

A failed ``fdatasync`` is modelled the way Linux behaves ("fsyncgate"): the dirty pages are
marked clean without reaching the disk, so those bytes read back fine but are zeros on the
disk even after a later fsync "succeeds".

``Gate`` pauses an operation just before it is performed (``reached`` is set, then it waits
for ``release``): a group commit's leader can be held inside its ``fdatasync`` while the test
looks at what a power loss at that instant would leave.

``named_before_data`` lists every file whose name a directory fsync made durable while none
of its data was (a new segment before its header, a rename target before its contents): the
rule "data first, then the name".

It also stops a workload at any operation (``crash_at``: ``SimulatedCrash`` is raised at the
n-th counted operation, before or after performing it; afterwards every operation fails with
EIO as on a dead machine) and injects errors (``FaultRule``: the k-th write, fdatasync,
fsync_dir, rename, unlink, truncate or open fails with an errno; short writes).

Counted operations: open, write, fdatasync, fsync_dir, rename, unlink, truncate, fallocate
(``close`` is performed but not counted: it changes nothing on disk).

Preallocated space: ``fallocate`` (or a write of zeros) grows the file with zeros that, like any
write, are durable only after the next ``fdatasync`` (before it, the growth is lost, kept, or
zero/garbage filled as any unsynced tail). Once durable, a later write *into* that space is an
unsynced overwrite: a power cut keeps it, loses it (the durable zeros read back), keeps a prefix
of it (the durable zeros after), or fills it with zeros or garbage: the file never shrinks
below its durable size, and only the bytes written since the sync change.
"""

from __future__ import annotations

import errno as errno_mod
import os
import random
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

__all__ = [
    "OPS",
    "TAIL_MODES",
    "CrashFS",
    "FaultRule",
    "Gate",
    "SimulatedCrash",
]

OPS = ("open", "write", "fdatasync", "fsync_dir", "rename", "unlink", "truncate", "fallocate")
TailMode = Literal["drop", "keep", "prefix", "zero", "garbage", "hole"]
TAIL_MODES: tuple[TailMode, ...] = ("drop", "keep", "prefix", "zero", "garbage", "hole")
PAGE = 4096  # the page cache's unit: a power loss keeps or loses whole pages


class SimulatedCrash(BaseException):
    """The power went out at this operation. A BaseException so no ``except Exception`` eats it."""


@dataclass
class FaultRule:
    """Fail the ``nth`` call (1-based) of ``op`` whose path contains ``path_contains``.

    ``short`` (writes only): write that many bytes for real and return the count; the next
    write (on any descriptor) then raises ``errno``, like a file system that just filled up.
    ``persistent``: every matching call from the ``nth`` on fails, not only the ``nth``.
    ``hold``: when the rule fires, set ``reached`` and wait for ``hold`` before failing (to
    line up concurrent appenders behind a failing fsync).
    """

    op: str
    nth: int = 1
    errno: int = errno_mod.EIO
    path_contains: str | None = None
    short: int | None = None
    persistent: bool = False
    hold: threading.Event | None = None
    reached: threading.Event = field(default_factory=threading.Event)
    seen: int = 0  # matching calls so far
    fired: int = 0  # failures injected so far

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ValueError(f"FaultRule.op must be one of {OPS}, got {self.op!r}")
        if self.short is not None and self.op != "write":
            raise ValueError("FaultRule.short is for op='write' only")


@dataclass
class Gate:
    """Pause the ``nth`` call (1-based, counted from when the gate is added) of ``op`` whose path
    contains ``path_contains``, just before it is performed: set ``reached``, wait for
    ``release`` (at most ``timeout`` seconds, then fail loudly), then perform it normally."""

    op: str
    nth: int = 1
    path_contains: str | None = None
    timeout: float = 60.0
    reached: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    seen: int = 0

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ValueError(f"Gate.op must be one of {OPS}, got {self.op!r}")


class _File:
    """One file (an inode): what its last fdatasync made durable and what it holds now."""

    __slots__ = ("current", "durable", "lost", "name")

    def __init__(self, name: str, data: bytes = b"", durable: bool = False) -> None:
        self.name = name  # the name it was created under (for messages)
        self.current = bytearray(data)
        self.durable = bytes(data) if durable else b""
        self.lost: list[tuple[int, int]] = []  # ranges dropped by a failed fsync (fsyncgate)

    def synced_view(self) -> bytes:
        """The current bytes as writeback would put them on disk (fsyncgate ranges zeroed)."""
        data = bytearray(self.current)
        for a, b in self.lost:
            b = min(b, len(data))
            if a < b:
                # the disk keeps what it had there: the durable bytes, zeros past their end
                old = self.durable[a:b]
                data[a:b] = old + bytes(b - a - len(old))
        return bytes(data)

    def dirty_range(self) -> tuple[int, int]:
        """The bytes written since the last fdatasync (``_changed_range``)."""
        return _changed_range(self.durable, self.current)


def _changed_range(durable: bytes, now: bytes | bytearray) -> tuple[int, int]:
    """Where ``now`` differs from ``durable``: from the first byte that differs to the end of
    the file when its size changed, else to the last byte that differs (a write into
    preallocated space). Empty (a == b) when nothing differs."""
    limit = min(len(durable), len(now))
    a = 0
    while a < limit and durable[a] == now[a]:
        a += 1
    if len(now) != len(durable):
        return a, len(now)
    b = limit
    while b > a and durable[b - 1] == now[b - 1]:
        b -= 1
    return a, b


@dataclass
class _DirOp:
    kind: Literal["create", "rename", "unlink"]
    name: str
    file: _File
    dst: str = ""

    def __str__(self) -> str:
        return f"{self.kind} {self.name}" + (f" -> {self.dst}" if self.dst else "")


@dataclass
class _Dir:
    durable: dict[str, _File]
    current: dict[str, _File]
    pending: list[_DirOp] = field(default_factory=list)


class CrashFS:
    """A ``wal.log.fileops.FileOps`` over the real files that also models a power loss.

    ``root``: the directory whose contents are modelled (the log directory). Files already in
    it are taken as durable. Operations elsewhere are performed and counted, not modelled.
    ``crash_at``: raise ``SimulatedCrash`` at this counted operation (1-based), ``before``
    or ``after`` performing it (``crash_when``).
    ``rules``: errors to inject (``FaultRule``).
    ``gates``: operations to pause (``Gate``); ``add_gate`` adds one while the workload runs.
    ``ignore_fsync_dir(caller, previous_op)``: when it returns True the directory fsync is
    performed but the model does not persist anything: as if that line of the storage were
    deleted. ``caller`` is the name of the function that called ``fsync_dir``.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        crash_at: int | None = None,
        crash_when: Literal["before", "after"] = "before",
        rules: Iterable[FaultRule] = (),
        gates: Iterable[Gate] = (),
        ignore_fsync_dir: Callable[[str, str], bool] | None = None,
    ) -> None:
        self.root = os.path.abspath(root)
        self.crash_at = crash_at
        self.crash_when = crash_when
        self.rules = list(rules)
        self.gates = list(gates)  # more may be appended while a workload runs
        self.ignore_fsync_dir = ignore_fsync_dir
        self.crashed = False
        self.op_count = 0
        self.ops: list[tuple[str, str]] = []  # (op, path) of every counted operation
        self.failures: list[tuple[str, str, int]] = []  # (op, path, errno) injected
        self.ignored_dir_syncs = 0
        # files whose name a directory fsync made durable while none of their data was
        self.named_before_data: list[str] = []
        self._mu = threading.RLock()
        self._fds: dict[int, tuple[_File | None, str]] = {}
        self._short_pending: FaultRule | None = None
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        files: dict[str, _File] = {}
        for name in sorted(os.listdir(self.root)):
            p = os.path.join(self.root, name)
            if os.path.isfile(p) and not os.path.islink(p):
                files[name] = _File(name, Path(p).read_bytes(), durable=True)
        self._dir = _Dir(durable=dict(files), current=dict(files))

    # ------------------------------------------------------------------ bookkeeping

    def _entry(self, path: str) -> str | None:
        """The name inside the modelled directory, or None for a path elsewhere."""
        parent, name = os.path.split(os.path.abspath(path))
        return name if parent == self.root else None

    def _begin(self, op: str, path: str) -> bool:
        """Count an operation; crash before it if asked. Returns True to crash after it."""
        with self._mu:
            if self.crashed:
                raise OSError(errno_mod.EIO, f"simulated power loss: {op} {path} after the crash")
            self.op_count += 1
            self.ops.append((op, path))
            if self.crash_at is not None and self.op_count == self.crash_at:
                if self.crash_when == "before":
                    self.crashed = True
                    raise SimulatedCrash(f"power loss before {op} {path} (op {self.op_count})")
                return True
            return False

    def _crash_after(self, op: str, path: str) -> None:
        with self._mu:
            self.crashed = True
        raise SimulatedCrash(f"power loss after {op} {path} (op {self.op_count})")

    def _fault(self, op: str, path: str) -> FaultRule | None:
        """The rule that fails this call, if any (waits on its ``hold`` first)."""
        hit = None
        with self._mu:
            for r in self.rules:
                if r.op != op or (r.path_contains is not None and r.path_contains not in path):
                    continue
                r.seen += 1
                if r.seen == r.nth or (r.persistent and r.seen > r.nth):
                    hit = r
                    break
        if hit is None:
            return None
        hit.reached.set()
        if hit.hold is not None and not hit.hold.wait(timeout=30):
            raise RuntimeError("FaultRule.hold was never released")
        hit.fired += 1
        return hit

    def add_gate(self, gate: Gate) -> Gate:
        """Pause a later operation: ``gate.nth`` counts the matching calls from now on."""
        with self._mu:
            self.gates.append(gate)
        return gate

    def _gate(self, op: str, path: str) -> None:
        """Wait at the gate that pauses this call, if any."""
        hit = None
        with self._mu:
            for g in self.gates:
                if g.op != op or (g.path_contains is not None and g.path_contains not in path):
                    continue
                g.seen += 1
                if g.seen == g.nth:
                    hit = g
                    break
        if hit is None:
            return
        hit.reached.set()
        if not hit.release.wait(timeout=hit.timeout):
            raise RuntimeError(f"Gate on {op} {path} was never released")

    def _fail(self, rule: FaultRule, op: str, path: str) -> OSError:
        with self._mu:
            self.failures.append((op, path, rule.errno))
        return OSError(rule.errno, f"injected {errno_mod.errorcode[rule.errno]} on {op}", path)

    # ------------------------------------------------------------------ FileOps

    def open(self, path: str, flags: int, mode: int = 0o600) -> int:
        after = self._begin("open", path)
        try:
            rule = self._fault("open", path)
            if rule is not None:
                raise self._fail(rule, "open", path)
            name = self._entry(path)
            existed = os.path.lexists(path)
            fd = os.open(path, flags | os.O_CLOEXEC, mode)
            f: _File | None = None
            if name is not None:
                with self._mu:
                    d = self._dir
                    f = d.current.get(name)
                    if f is None:
                        if existed:  # made outside this layer: take it as durable
                            f = _File(name, Path(path).read_bytes(), durable=True)
                            d.durable.setdefault(name, f)
                            d.current[name] = f
                        else:
                            f = _File(name)
                            d.current[name] = f
                            d.pending.append(_DirOp("create", name, f))
                    if flags & os.O_TRUNC:
                        f.current = bytearray()
                        f.lost = []
            with self._mu:
                self._fds[fd] = (f, path)
            return fd
        finally:
            if after:
                self._crash_after("open", path)

    def write(self, fd: int, data: bytes) -> int:
        f, path = self._fds.get(fd, (None, f"fd {fd}"))
        after = self._begin("write", path)
        try:
            self._gate("write", path)
            with self._mu:
                short, self._short_pending = self._short_pending, None
            if short is not None:
                raise self._fail(short, "write", path)
            rule = self._fault("write", path)
            if rule is not None and rule.short is None:
                raise self._fail(rule, "write", path)
            if rule is not None:
                data = data[: rule.short]
                with self._mu:
                    self._short_pending = rule
            n = os.write(fd, data)
            if f is not None and n > 0:
                end = os.lseek(fd, 0, os.SEEK_CUR)
                start = end - n
                with self._mu:
                    if len(f.current) < start:
                        f.current.extend(bytes(start - len(f.current)))
                    f.current[start:end] = data[:n]
                    # rewritten bytes are dirty again: they are no longer lost
                    f.lost = [(a, b) for a, b in f.lost if b <= start or a >= end]
            return n
        finally:
            if after:
                self._crash_after("write", path)

    def fdatasync(self, fd: int) -> None:
        f, path = self._fds.get(fd, (None, f"fd {fd}"))
        after = self._begin("fdatasync", path)
        try:
            self._gate("fdatasync", path)
            rule = self._fault("fdatasync", path)
            if rule is not None:
                if f is not None:
                    with self._mu:
                        # Linux marks the dirty pages clean without writing them (fsyncgate)
                        a, b = f.dirty_range()
                        if a < b:
                            f.lost.append((a, b))
                raise self._fail(rule, "fdatasync", path)
            os.fdatasync(fd)
            if f is not None:
                with self._mu:
                    f.durable = f.synced_view()
        finally:
            if after:
                self._crash_after("fdatasync", path)

    def close(self, fd: int) -> None:
        with self._mu:
            self._fds.pop(fd, None)
        os.close(fd)

    def fsync_dir(self, path: str) -> None:
        caller = sys._getframe(1).f_code.co_name
        previous = self.ops[-1][0] if self.ops else ""
        after = self._begin("fsync_dir", path)
        try:
            rule = self._fault("fsync_dir", path)
            if rule is not None:
                raise self._fail(rule, "fsync_dir", path)
            dfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
            if os.path.abspath(path) == self.root:
                if self.ignore_fsync_dir is not None and self.ignore_fsync_dir(caller, previous):
                    self.ignored_dir_syncs += 1
                    return
                with self._mu:
                    for op in self._dir.pending:
                        name = op.dst or op.name
                        if (
                            op.kind != "unlink"
                            and self._dir.current.get(name) is op.file
                            and op.file.current
                            and not op.file.durable
                        ):
                            self.named_before_data.append(f"{name} (by {caller})")
                    self._dir.durable = dict(self._dir.current)
                    self._dir.pending.clear()
        finally:
            if after:
                self._crash_after("fsync_dir", path)

    def rename(self, src: str, dst: str) -> None:
        after = self._begin("rename", src)
        try:
            rule = self._fault("rename", src)
            if rule is not None:
                raise self._fail(rule, "rename", src)
            a, b = self._entry(src), self._entry(dst)
            if (a is None) != (b is None):
                raise AssertionError(f"CrashFS models one directory: rename {src} -> {dst}")
            os.rename(src, dst)
            if a is not None and b is not None:
                with self._mu:
                    f = self._dir.current.pop(a)
                    self._dir.current[b] = f
                    self._dir.pending.append(_DirOp("rename", a, f, b))
                    # a descriptor follows its file: later operations on it name the new path
                    for fd, (of, opath) in list(self._fds.items()):
                        if opath == src:
                            self._fds[fd] = (of, dst)
        finally:
            if after:
                self._crash_after("rename", src)

    def unlink(self, path: str) -> None:
        after = self._begin("unlink", path)
        try:
            rule = self._fault("unlink", path)
            if rule is not None:
                raise self._fail(rule, "unlink", path)
            os.unlink(path)
            name = self._entry(path)
            if name is not None:
                with self._mu:
                    f = self._dir.current.pop(name, None)
                    if f is not None:
                        self._dir.pending.append(_DirOp("unlink", name, f))
        finally:
            if after:
                self._crash_after("unlink", path)

    def truncate(self, path: str, length: int) -> None:
        after = self._begin("truncate", path)
        try:
            rule = self._fault("truncate", path)
            if rule is not None:
                raise self._fail(rule, "truncate", path)
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.ftruncate(fd, length)
                os.fsync(fd)  # as OSFileOps.truncate: the cut (and the whole file) is durable
            finally:
                os.close(fd)
            name = self._entry(path)
            if name is not None:
                with self._mu:
                    f = self._dir.current.get(name)
                    if f is not None:
                        if len(f.current) > length:
                            del f.current[length:]
                        else:
                            f.current.extend(bytes(length - len(f.current)))
                        f.lost = [(a, min(b, length)) for a, b in f.lost if a < length]
                        f.durable = f.synced_view()
        finally:
            if after:
                self._crash_after("truncate", path)

    def revive(self) -> None:
        """The process was killed, not the machine: it restarts on the same files (the page
        cache survived), and the model of what is durable is kept for a later power loss."""
        with self._mu:
            self.crashed = False
            self._fds.clear()

    def fallocate(self, fd: int, offset: int, length: int) -> None:
        f, path = self._fds.get(fd, (None, f"fd {fd}"))
        after = self._begin("fallocate", path)
        try:
            rule = self._fault("fallocate", path)
            if rule is not None:
                raise self._fail(rule, "fallocate", path)
            os.posix_fallocate(fd, offset, length)
            if f is not None:
                with self._mu:
                    end = offset + length
                    if len(f.current) < end:  # the file grows with zeros (not durable yet)
                        f.current.extend(bytes(end - len(f.current)))
        finally:
            if after:
                self._crash_after("fallocate", path)

    # ------------------------------------------------------------------ the crash image

    def pending_dir_ops(self) -> list[str]:
        """The directory operations made since the last directory fsync, in order."""
        with self._mu:
            return [str(op) for op in self._dir.pending]

    def image_files(
        self,
        tail_mode: TailMode = "drop",
        rng: random.Random | None = None,
        dir_ops: Iterable[int] = (),
    ) -> dict[str, bytes]:
        """What the modelled directory would hold after a power cut now: name -> bytes.

        ``dir_ops``: indexes into ``pending_dir_ops()`` that reached the disk anyway (applied
        in their order; the rest are lost). ``tail_mode`` says what becomes of each file's
        bytes written after its last fdatasync: ``drop``, ``keep``, ``prefix`` (a random
        prefix survives), ``zero`` (the file grew but the data blocks are zeros), ``garbage``
        (random bytes), ``hole`` (one page lost, a later one kept). ``rng`` drives ``prefix``,
        ``garbage`` and ``hole`` (default ``Random(0)``).
        """
        if tail_mode not in TAIL_MODES:
            raise ValueError(f"tail_mode must be one of {TAIL_MODES}, got {tail_mode!r}")
        rng = rng or random.Random(0)
        with self._mu:
            entries = dict(self._dir.durable)
            chosen = sorted(set(dir_ops))
            for i in chosen:
                op = self._dir.pending[i]
                if op.kind == "create":
                    entries[op.name] = op.file
                elif op.kind == "rename":
                    if entries.get(op.name) is op.file:
                        del entries[op.name]
                    entries[op.dst] = op.file
                elif entries.get(op.name) is op.file:
                    del entries[op.name]
            out: dict[str, bytes] = {}
            done: dict[int, bytes] = {}
            for name in sorted(entries):
                f = entries[name]
                if id(f) not in done:
                    done[id(f)] = _after_power_loss(f, tail_mode, rng)
                out[name] = done[id(f)]
            return out

    def crash_image(
        self,
        dest_dir: str | os.PathLike[str],
        tail_mode: TailMode = "drop",
        rng: random.Random | None = None,
        dir_ops: Iterable[int] = (),
    ) -> dict[str, bytes]:
        """Write ``image_files(...)`` into the new directory ``dest_dir``; return them."""
        files = self.image_files(tail_mode, rng, dir_ops)
        write_image(dest_dir, files)
        return files


def _after_power_loss(f: _File, mode: TailMode, rng: random.Random) -> bytes:
    """A file's bytes on disk after a power cut: durable bytes, then the unsynced tail.

    The unsynced tail runs from the first byte that differs from the durable bytes to the end
    of the file when it grew, else to the last byte that differs (a write into preallocated
    space): its fate is chosen by ``mode``; what the fate does not keep reads back as the
    durable bytes (a durable size never shrinks) or is gone (beyond the durable size).
    """
    durable = f.durable
    now = f.synced_view()
    if len(now) < len(durable) and mode == "drop":
        return durable  # cut without a sync (O_TRUNC): the old bytes are on disk
    common, hi = _changed_range(durable, now)
    tail = now[common:hi]
    if mode == "drop":
        kept = b""
    elif mode == "keep":
        kept = tail
    elif mode == "prefix":
        kept = tail[: rng.randint(0, len(tail))]
    elif mode == "zero":
        kept = bytes(len(tail))
    elif mode == "hole":
        kept = _with_hole(tail, common, rng)
    else:
        kept = rng.randbytes(len(tail))
    if len(now) < len(durable):
        return now[:common] + kept  # as before the model knew preallocated space
    # ``now`` has fsyncgate ranges zeroed: they never reach disk
    return now[:common] + kept + durable[common + len(kept) :]


def _with_hole(tail: bytes, start: int, rng: random.Random) -> bytes:
    """``tail`` (at file offset ``start``) with one page lost: the bytes from the start of a
    page (or of the tail, when that page holds durable bytes too) to its end read as zeros,
    while the page after it is kept. A tail within one page is kept whole (no later page)."""
    end = start + len(tail)
    bounds = list(range((start // PAGE + 1) * PAGE, end, PAGE))  # page starts inside the tail
    if not bounds:
        return tail
    k = rng.randrange(len(bounds))
    lo = bounds[k - 1] if k > 0 else start  # the lost page: from its start (or the tail's)
    hi = bounds[k]  # to its end; the page from ``hi`` on is kept
    out = bytearray(tail)
    out[lo - start : hi - start] = bytes(hi - lo)
    return bytes(out)


def write_image(dest_dir: str | os.PathLike[str], files: Mapping[str, bytes]) -> Path:
    """Create ``dest_dir`` (0700) holding ``files`` (0600 each)."""
    d = Path(dest_dir)
    d.mkdir(mode=0o700, parents=True)
    for name, data in files.items():
        p = d / name
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
    return d
