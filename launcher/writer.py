"""The launcher's stdout and stderr: bounded queues drained by writer threads, so output never holds up the job.

Everything the launcher prints, rank output and its own messages, is queued here
and written by one thread per destination: stdout and stderr, or a single
thread when both are the same file or terminal, so that lines never interleave
mid-line. The supervisor never waits on a write; a reader that stops reading (a
paused `less`, a FIFO nobody drains) holds up only its writer thread.

Rank output waits for room in its destination's queue (`BUFFER_BYTES`) while
that destination's writes make progress, so a slow reader slows the ranks
down as a terminal would. Once a write has made no progress for `STALL_AFTER`
seconds, rank output for that destination is dropped and counted instead, so
the ranks' pipes keep being read; one line on stderr says how many lines were
lost (at most every `NOTICE_EVERY` seconds once the reader is back, and at
exit). The launcher's own messages always get a place in the queue. At exit
`close` lets the queues empty while their writes make progress, for at most
`CLOSE_WAIT` seconds in all. A reader that went away (`| head`) ends the output, and
`LineWriter.on_reader_gone` is called once: the job then stops as a program writing to a pipe
whose reader left does (SIGPIPE), rather than run on with nobody reading.
"""

from __future__ import annotations

import collections
import errno
import os
import select
import stat
import threading
import time
from typing import Callable

BUFFER_BYTES = 4 << 20  # rank output queued for one destination, at most
MESSAGE_ROOM = 1 << 20  # beyond BUFFER_BYTES, for the launcher's own messages
WRITE_BYTES = 16 << 10  # the most one write() call is given: progress is seen at least this often
# To a pipe, at most this much, ending at a line's end where one fits: the kernel takes such a write
# whole or not at all (POSIX's PIPE_BUF), so a reader that stops for good leaves no line cut short,
# and what was written is known to the byte when the launcher gives up on it.
PIPE_WRITE_BYTES = min(4096, getattr(select, "PIPE_BUF", 512))  # Linux 4096; macOS 512
STALL_AFTER = 2.0  # a write without progress this long: the destination is not being read
NOTICE_EVERY = 5.0  # seconds between two "lines dropped" notices while the job runs
CLOSE_STALL = 2.0  # at exit, give up on a destination whose write made no progress this long
CLOSE_WAIT = 10.0  # at exit, give up on every destination after this long


class Destination:
    """One output file (the launcher's stdout or stderr) and the thread that writes to it."""

    def __init__(self, fd: int, name: str, notify: Callable[[str], None], gone: Callable[[], None]) -> None:
        self.fd = fd
        self.name = name
        self._notify = notify  # says something on stderr (called without the lock held)
        self._tell_gone = gone  # rank output found its reader gone (EPIPE; called without the lock held)
        self._items: collections.deque[tuple[bytes, int]] = collections.deque()  # (data, rank lines in it)
        self._queued = 0  # bytes in _items and in the write under way
        self._writing = b""  # the write under way
        self._writing_parts: list[tuple[int, int]] = []  # its items: (bytes, rank lines in them)
        self._written = 0  # bytes of it written so far
        self._given_up = False  # its rest was counted as dropped (`lost`): not written after all
        self._cond = threading.Condition()
        self._progress: float | None = None  # while a write is under way: when it last moved
        self._dropped = 0  # rank lines dropped and not yet reported
        self._last_notice = 0.0
        self._dead = not _is_open(fd)
        self._epipe = False  # it died of its reader going away (EPIPE)
        self.failed = False  # rank output could not be written (an error other than a reader gone)
        self.gone = False  # rank output could not be written: its reader went away
        self.lost_any = False  # rank output was dropped for a reader that did not read
        self._piece = PIPE_WRITE_BYTES if _is_pipe(fd) else WRITE_BYTES
        threading.Thread(target=self._run, name=f"write {name}", daemon=True).start()

    def put(self, data: bytes, lines: int) -> None:
        """Queue `lines` lines of rank output: wait while the destination is being written, else drop them."""
        with self._cond:
            while not self._dead and self._queued + len(data) > BUFFER_BYTES:
                stalled = self._stalled_for()
                if stalled >= STALL_AFTER:
                    self._dropped += lines
                    self.lost_any = True
                    return
                self._cond.wait(STALL_AFTER - stalled)
            tell = self._dead and lines > 0 and self._lose_rank_output()  # (dead before, or while it waited)
            self._append(data, lines)
        if tell:
            self._tell_gone()

    def put_message(self, data: bytes) -> None:
        """Queue one of the launcher's own lines; never waits."""
        with self._cond:
            if self._queued + len(data) <= BUFFER_BYTES + MESSAGE_ROOM:
                self._append(data, 0)

    def drain(self, deadline: float, stall: float = CLOSE_STALL) -> None:
        """Wait until everything queued is written, or the writes stop moving for `stall` s, or
        `deadline` passes."""
        with self._cond:
            while not self._dead and (self._items or self._progress is not None):
                now = time.monotonic()
                stalled = self._stalled_for()
                if now >= deadline or stalled >= stall:
                    return
                self._cond.wait(min(deadline - now, stall - stalled))

    def lost(self) -> int:
        """Rank lines dropped or still unwritten, not yet reported (resets the count); they are
        given up on. The launcher's own lines stay queued."""
        with self._cond:
            count = self._dropped
            if not self._dead:
                count += sum(lines for _, lines in self._items)
                if self._progress is not None:
                    count += self._unwritten_lines()
                    self._given_up = True
            self._dropped = 0
            kept = collections.deque(item for item in self._items if item[1] == 0)
            self._queued -= sum(len(data) for data, lines in self._items if lines)
            self._items = kept
            return count

    def _lose_rank_output(self) -> bool:
        """Rank output will not be written here (the destination is dead): noted, for the exit
        status; whether its reader going away is news to tell (`gone`), with the lock held."""
        if self._epipe:
            first, self.gone = not self.gone, True
            return first
        self.failed = True
        return False

    def _unwritten_lines(self) -> int:
        """Rank lines of the write under way not yet wholly written (a line cut short counts)."""
        count, start, written = 0, 0, self._written
        for size, lines in self._writing_parts:
            end = start + size
            if lines and end > written:
                count += lines if start >= written else self._writing.count(b"\n", written, end)
            start = end
        return count

    def _append(self, data: bytes, lines: int) -> None:
        if self._dead:
            return
        self._items.append((data, lines))
        self._queued += len(data)
        self._cond.notify_all()

    def _stalled_for(self) -> float:
        return 0.0 if self._progress is None else time.monotonic() - self._progress

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._items:
                    self._cond.wait()
                data, lines = self._items.popleft()
                parts = [data]
                self._writing_parts = [(len(data), lines)]
                size = len(data)
                while self._items and size + len(self._items[0][0]) <= 4 * WRITE_BYTES:
                    more, more_lines = self._items.popleft()
                    parts.append(more)
                    self._writing_parts.append((len(more), more_lines))
                    size += len(more)
                self._writing = b"".join(parts) if len(parts) > 1 else data
                self._written = 0
                self._given_up = False
                self._progress = time.monotonic()
            error = self._write(self._writing)
            with self._cond:
                self._progress = None
                self._queued -= size
                tell = False
                if error is not None:
                    self._dead = True
                    self._epipe = error.errno == errno.EPIPE
                    if self._unwritten_lines() or any(n for _, n in self._items):  # rank output never written
                        tell = self._lose_rank_output()
                    self._items.clear()
                    self._queued = 0
                report = 0
                now = time.monotonic()
                if self._dropped and error is None and now - self._last_notice >= NOTICE_EVERY:
                    report, self._dropped, self._last_notice = self._dropped, 0, now
                self._cond.notify_all()
            if report:
                self._notify(dropped_notice(report, self.name))
            if tell:
                self._tell_gone()
            if error is not None and not self._epipe:
                self._notify(f"ringdist-launch: cannot write to {self.name}: {error.strerror or error}; "
                             "dropping its output")

    def _write(self, data: bytes) -> OSError | None:
        """Write all of `data`; the error that ended the destination, if any."""
        view = memoryview(data)
        pos, size, piece = 0, len(data), self._piece
        room = None
        while pos < size:
            end = pos + piece
            if piece == PIPE_WRITE_BYTES:
                if end < size:
                    cut = data.rfind(b"\n", pos, end)
                    if cut >= pos:
                        end = cut + 1
                # A pipe with room for a piece takes it at once: wait for that room here, where
                # giving up (`lost`) can still stop the piece (once in a blocked write it would go
                # out after being counted as dropped).
                if room is None:
                    room = select.poll()
                    room.register(self.fd, select.POLLOUT)
                while not room.poll(100):
                    with self._cond:
                        if self._given_up:
                            return None
                with self._cond:
                    if self._given_up:
                        return None
            try:
                n = os.write(self.fd, view[pos:end])
            except BlockingIOError:  # a non-blocking file description: wait until it takes more
                poller = select.poll()
                poller.register(self.fd, select.POLLOUT)
                poller.poll(1000)
                continue
            except OSError as e:
                if e.errno == errno.EPIPE:
                    _discard_from_now_on(self.fd)  # `| head` went away: later writes (and exit's flush) are no-ops
                return e
            pos += n
            with self._cond:
                self._written += n
                self._progress = time.monotonic()
        return None


class LineWriter:
    """Where rank output and the launcher's messages go: stdout and stderr, each through a `Destination`."""

    def __init__(self, stdout_fd: int = 1, stderr_fd: int = 2) -> None:
        # Called once, from a writer thread, when a reader of stdout or stderr went away (`| head`).
        self.on_reader_gone: Callable[[], None] | None = None
        self._gone_told = False
        self._gone_lock = threading.Lock()
        self.stderr = Destination(stderr_fd, "stderr", self.message, self._reader_gone)
        self.stdout = self.stderr if _same_file(stdout_fd, stderr_fd) else \
            Destination(stdout_fd, "stdout", self.message, self._reader_gone)
        if self.stdout is self.stderr:
            self.stderr.name = "stdout"

    def _reader_gone(self) -> None:
        with self._gone_lock:  # (two writer threads may see their reader go at once)
            first, self._gone_told = not self._gone_told, True
        if first and self.on_reader_gone is not None:
            self.on_reader_gone()

    def write(self, destination: Destination, data: bytes, lines: int = 1) -> None:
        """Queue `lines` whole lines of rank output (`data`) for `destination` (`self.stdout`, `self.stderr`)."""
        destination.put(data, lines)

    def message(self, text: str) -> None:
        """A line from the launcher itself, on stderr; never waits."""
        self.stderr.put_message(text.encode("utf-8", "replace") + b"\n")

    def close(self) -> tuple[bool, bool]:
        """At exit: write what is queued while the writes make progress (bounded), then say what was
        lost. Whether any rank output was lost (dropped at any time, or not writable), and whether
        some could not be written because its reader went away."""
        deadline = time.monotonic() + CLOSE_WAIT
        destinations = [self.stdout] if self.stdout is self.stderr else [self.stdout, self.stderr]
        for d in destinations:
            d.drain(deadline)
        lost = [(d.lost(), d.name) for d in destinations]
        for count, name in lost:
            if count:
                self.message(dropped_notice(count, name))
        # Its own time: the rank output's may be spent. Where lines were lost, the notice waits for a
        # reader that paused (`| less`, stdout and stderr one pipe) as long as rank output did in all.
        told = any(count for count, _ in lost)
        wait = CLOSE_WAIT if told else CLOSE_STALL
        self.stderr.drain(time.monotonic() + wait, wait)
        gone = any(d.gone for d in destinations)
        return told or gone or any(d.lost_any or d.failed for d in destinations), gone


def dropped_notice(count: int, name: str) -> str:
    return f"ringdist-launch: {count} line{'s' if count != 1 else ''} of rank output dropped ({name} not being read)"


def _same_file(a: int, b: int) -> bool:
    try:
        sa, sb = os.fstat(a), os.fstat(b)
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def _is_pipe(fd: int) -> bool:
    try:
        return stat.S_ISFIFO(os.fstat(fd).st_mode)
    except OSError:
        return False


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def _discard_from_now_on(fd: int) -> None:
    """The reader of `fd` went away: point it at /dev/null instead of failing on every write."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)
    except OSError:
        pass
