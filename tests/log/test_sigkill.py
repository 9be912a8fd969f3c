"""Real SIGKILLs of a real writer process, and named crash points inside the write path.

``walwriter_child.py`` appends, changes statuses, rotates (4 KiB segments) and compacts, and
reports each acknowledged LSN over a pipe only after the call returned. The test kills it
after a random number of acks (seeded; ``WAL_SIGKILL_SEED`` replays a run), reopens the log
and checks, after every kill:

* every acknowledged entry is present, with its LSN, its exact content and a valid checksum
  (or, if its acknowledged status was COMPLETED, it may have been compacted away);
* every status is the acknowledged one, or the one the killed call was writing;
* the entries of the killed append are all there or a prefix of them (never a hole), and
  nothing else appeared: no entry twice, no entry nobody appended;
* on disk (checked without the storage's recovery code): no partial record, LSNs gap-free.

One log directory lives through all the kills, so each child also recovers its
predecessor's crash (every other verification opens the log read-only, leaving the repair to
the next child). The random-kill writers are forked from a zygote process that imported the
library once (about 20 ms a cycle instead of a 250 ms interpreter start); each is still its
own process with its own log handle. 400 kills by default, ``WAL_SIGKILL_KILLS`` or
``WAL_STRESS=1`` (1500) for more. SIGKILL keeps the page cache: power loss is
``test_crash_powerloss.py``'s job.

``WAL_CRASH_POINT`` runs stop the child with ``os._exit(137)`` at a named point (see
``wal/crashpoints.py``); what was written before that point must be recovered.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pytest
from helpers_log import check_files
from walwriter_child import content

from wal import WALStorage
from wal.codec import encode_value
from wal.crashpoints import POINTS

CHILD = Path(__file__).resolve().parents[1] / "support" / "walwriter_child.py"
SEED = int(os.environ.get("WAL_SIGKILL_SEED", "20261121"))
STORAGE_POINTS = sorted(p for p in POINTS if "." not in p)  # manager.* points: test_manager
KILLS = int(os.environ.get("WAL_SIGKILL_KILLS", "1500" if os.environ.get("WAL_STRESS") else "400"))


def read_acks(out: IO[bytes], kill_after: int | None, kill: Callable[[], None]) -> list[str]:
    """Read a child's lines; call ``kill`` right after line number ``kill_after`` + 1."""
    lines: list[str] = []
    with out:
        for raw in out:
            lines.append(raw.decode().rstrip("\n"))
            if kill_after is not None and len(lines) > kill_after:
                kill()
                break
        lines += out.read().decode().splitlines()  # what it said before it died
    return lines


class Zygote:
    """``walwriter_child.py --zygote``: imports the library once and forks each writer, so a
    kill cycle does not pay the interpreter start. Every writer is still a process of its
    own, with its own log handle and lock, killed with a real SIGKILL."""

    def __init__(self, fifo: Path) -> None:
        self.fifo = fifo
        os.mkfifo(fifo, 0o600)
        self.proc = subprocess.Popen(
            [sys.executable, str(CHILD), "--zygote"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=CHILD.parent,
        )

    def _ask(self, command: str) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(command.encode() + b"\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().decode().strip()

    def spawn(self, args: list[str]) -> tuple[int, IO[bytes]]:
        reply = self._ask(f"RUN {self.fifo} {' '.join(args)}")
        assert reply.startswith("P "), reply
        return int(reply[2:]), open(self.fifo, "rb")  # read_acks closes it

    def wait(self, pid: int) -> int:
        reply = self._ask(f"WAIT {pid}")
        assert reply.startswith("W "), reply
        return int(reply[2:])

    def close(self) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        assert self.proc.wait(timeout=30) == 0
        self.proc.stdout.close()


@dataclass
class Known:
    n: int
    lsn: int
    status: str


@dataclass
class Tracker:
    """The test's model of what the log must hold: only what the children acknowledged."""

    directory: Path
    known: dict[str, Known] = field(default_factory=dict)
    acks: int = 0
    first_n: int = 0

    def run(
        self,
        seed: int,
        kill_after: int | None,
        env: dict[str, str] | None = None,
        max_ops: int | None = None,
        zygote: Zygote | None = None,
    ) -> tuple[list[str], int]:
        """Run a child; SIGKILL it after ``kill_after`` lines (None: let it run).

        Killing right after an ack line catches the child between two calls; right after a
        ``B`` line, inside the call (usually in its write or fdatasync). With a ``zygote`` the
        child is forked from it (``env`` is then not supported: crash points are read at
        import).
        """
        args = [str(self.directory), str(seed), str(self.first_n)]
        if max_ops is not None:
            args.append(str(max_ops))
        self.first_n += 1_000_000
        if zygote is not None:
            assert env is None
            pid, out = zygote.spawn(args)
            lines = read_acks(out, kill_after, lambda: os.kill(pid, signal.SIGKILL))
            return lines, zygote.wait(pid)
        proc = subprocess.Popen(
            [sys.executable, str(CHILD), *args],
            stdout=subprocess.PIPE,
            env={**os.environ, **(env or {})},
            cwd=CHILD.parent,
        )
        assert proc.stdout is not None
        lines = read_acks(proc.stdout, kill_after, lambda: proc.send_signal(signal.SIGKILL))
        return lines, proc.wait()

    def check(self, lines: list[str], readonly: bool = False) -> tuple[str, list[str]]:
        """Fold the child's acks into the model, reopen the log and check it against the model.

        Returns the kind of the call in flight at the kill ("" if none) and its entry ids.
        """
        announced: dict[str, int] = {}
        flight: tuple[str, ...] = ()
        for line in lines:
            kind, _, rest = line.partition(" ")
            if kind == "B":
                flight = tuple(rest.split(" "))
                if flight[0] == "A":
                    for item in flight[1:]:
                        n, eid = item.split(":")
                        announced[eid] = int(n)
            elif kind == "A":
                for item in rest.split(" "):
                    eid, lsn = item.split(":")
                    self.known[eid] = Known(announced[eid], int(lsn), "pending")
                    self.acks += 1
                flight = ()
            elif kind == "S":
                eid, status = rest.split(":")
                self.known[eid].status = status
                self.acks += 1
                flight = ()
            elif kind == "C":
                flight = ()
        if readonly:
            with WALStorage.open_readonly(self.directory) as log:
                got = list(log.iter_entries())
        else:
            with WALStorage(self.directory, max_segment_bytes=4096) as log:
                got = list(log.iter_entries())
                next_lsn = log.next_lsn
            check_files(self.directory)  # independent: no partial record, no LSN hole
            assert all(k.lsn < next_lsn for k in self.known.values())
        by_id = {str(e.entry_id): e for e in got}
        assert len(by_id) == len(got), "an entry is in the log twice"

        in_flight_ids: list[str] = []
        flight_status: tuple[str, str] | None = None
        if flight and flight[0] == "A":
            in_flight_ids = [item.split(":")[1] for item in flight[1:]]
        elif flight and flight[0] == "S":
            eid, status = flight[1].split(":")
            flight_status = (eid, status)

        for eid, e in by_id.items():
            num = self.known[eid].n if eid in self.known else announced.get(eid)
            assert num is not None, f"entry {eid} in the log was never appended"
            assert e.verify(), f"entry {eid}: checksum"
            want = content(num)
            assert e.kwargs == want, f"entry {eid}: content"
            assert encode_value(e.kwargs) == encode_value(want)  # Decimal exponents too
        for eid, k in self.known.items():
            found = by_id.get(eid)
            if found is None:
                assert k.status == "completed", f"acknowledged entry {eid} ({k}) is gone"
                continue
            assert found.lsn == k.lsn, f"entry {eid}: LSN {found.lsn}, acknowledged {k.lsn}"
            allowed = {k.status}
            if flight_status is not None and flight_status[0] == eid:
                allowed.add(flight_status[1])
            got_status = found.status.value
            assert got_status in allowed, f"entry {eid}: {got_status} not in {allowed}"
        present = [eid in by_id for eid in in_flight_ids]
        assert present == sorted(present, reverse=True), f"a hole in the killed batch: {present}"
        lsns = [by_id[eid].lsn or 0 for eid in in_flight_ids if eid in by_id]
        assert lsns == list(range(lsns[0], lsns[0] + len(lsns))) if lsns else True

        # the log is the truth from here on: adopt what the killed call left behind
        self.known = {
            eid: Known(
                self.known[eid].n if eid in self.known else announced[eid],
                e.lsn or 0,
                e.status.value,
            )
            for eid, e in by_id.items()
        }
        return (flight[0] if flight else ""), in_flight_ids


def test_sigkill_at_random_moments(tmp_path: Path) -> None:
    rnd = random.Random(SEED)
    tracker = Tracker(tmp_path / "log")
    zygote = Zygote(tmp_path / "acks.fifo")
    kills = 0
    in_flight = 0
    try:
        for cycle in range(KILLS):
            seed = rnd.randrange(2**32)
            lines, rc = tracker.run(seed, kill_after=rnd.randint(0, 80), zygote=zygote)
            assert rc == -signal.SIGKILL, f"seed {SEED}, cycle {cycle}: child ended with {rc}"
            kills += 1
            try:
                kind, _ = tracker.check(lines, readonly=cycle % 2 == 1)
            except AssertionError as exc:
                raise AssertionError(f"seed {SEED}, cycle {cycle}: {exc}") from exc
            in_flight += kind != ""
    finally:
        zygote.close()
    tracker.check([], readonly=False)  # the last child's crash repaired by a writer too
    assert kills >= 200 or os.environ.get("WAL_SIGKILL_KILLS")
    assert tracker.acks > kills  # the kills landed among real work
    assert in_flight > kills // 4  # ... and often in the middle of a call


@pytest.mark.parametrize("nth", [1, 3])
@pytest.mark.parametrize("point", STORAGE_POINTS)
def test_named_crash_point(tmp_path: Path, point: str, nth: int) -> None:
    tracker = Tracker(tmp_path / "log")
    rnd = random.Random(f"{SEED}-{point}-{nth}")
    # some history first, so that rotation and compaction have work to do
    lines, rc = tracker.run(rnd.randrange(2**32), kill_after=None, max_ops=60)
    assert rc == 0 and lines[-1] == "D"
    tracker.check(lines)
    env = {
        "WAL_CRASH_POINT": f"{point}:{nth}",
        "WALWRITER_COMPACT_P": "0.25" if point.startswith("compact") else "0.04",
        "WALWRITER_FAIL_P": "0",  # a FAILED entry would pin the front segment forever
    }
    lines, rc = tracker.run(rnd.randrange(2**32), kill_after=None, env=env, max_ops=5000)
    assert rc == 137, f"{point}:{nth} was never reached (exit {rc})"
    kind, ids = tracker.check(lines)
    if point.startswith("append"):
        # the batch was written in full before the exit: it must be recovered in full
        assert kind in ("A", "S", "C")
        if kind == "A":
            assert all(eid in tracker.known for eid in ids)
    if point.startswith("compact"):
        assert kind == "C"
    assert not list(tracker.directory.glob("*.wal.tmp"))
    # and the log goes on as usual
    lines, rc = tracker.run(rnd.randrange(2**32), kill_after=None, max_ops=40)
    assert rc == 0 and lines[-1] == "D"
    tracker.check(lines)


def test_crash_point_names_are_checked(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", "import wal.crashpoints"],
        env={**os.environ, "WAL_CRASH_POINT": "append-after-wirte"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode != 0 and "WAL_CRASH_POINT" in proc.stderr
