"""Rank output: copy each rank's stdout/stderr to the launcher's, line by line, prefixed `[r] `.

One reader thread per pipe. Lines go to the launcher's stdout or stderr through
`writer.LineWriter`, which writes each batch of whole lines at once (lines never
interleave mid-line, even when stdout and stderr are the same terminal) and never
lets a stalled reader of the launcher's output hold up the job or the ranks.
Bytes are copied as they are, so output that is not UTF-8 passes unchanged.

A line is written when it ends. Two kinds of unfinished line are written early,
so that memory stays bounded and progress shows:
- a segment ending in a carriage return (a progress bar redrawing its line) is
  written at once, prefixed like a line ("\\r\\n" still ends a line);
- a line longer than `LINE_CAP` bytes is written in pieces of at most that
  size, each but the last followed by `CONTINUED`.
With `--no-prefix` the bytes go out as the rank wrote them: no `CONTINUED`, and a last line
without a newline keeps none (one rank's output, `> result.json`, is its output byte for byte;
several ranks' long lines, or unfinished last lines, may then meet mid-line).
"""

from __future__ import annotations

import os
import threading
from typing import BinaryIO, Callable, Optional

from .writer import Destination, LineWriter

__all__ = ["LineWriter", "Pump", "pump_rank", "LINE_CAP", "CONTINUED"]

LINE_CAP = 64 << 10  # bytes of an unfinished line held before a piece of it is written
CONTINUED = b" [line continues]\n"
READ_BYTES = 64 << 10
# A piece cut at LINE_CAP never ends within this many bytes after a NUL byte: the
# remote keeper's reports (NUL-led, spawn.MARKER) reach the tap whole.
_REPORT_BYTES = 32

# Sees each line read (None at end of file) and returns what to write (None: nothing).
Tap = Callable[[Optional[bytes]], Optional[bytes]]


class Pump:
    """Copies one rank pipe to a launcher stream until the pipe closes."""

    def __init__(self, pipe: BinaryIO, stream: Destination, prefix: bytes, writer: LineWriter,
                 tap: Tap | None = None) -> None:
        self._pipe = pipe
        self._stream = stream
        self._prefix = prefix
        self._writer = writer
        self._tap = tap
        self._raw = not prefix  # --no-prefix: nothing added to the rank's bytes
        self._thread = threading.Thread(target=self._run, name=f"pump {prefix!r}", daemon=True)
        self._thread.start()

    def join(self, timeout: float) -> bool:
        """Wait up to `timeout` s for the pipe to reach end of file; True if it did."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        fd = self._pipe.fileno()
        pending = bytearray()  # the unfinished line
        try:
            while True:
                data = os.read(fd, READ_BYTES)
                if not data:
                    break
                pending += data
                self._emit(split_segments(pending))
            if pending:
                self._emit([(bytes(pending), b"" if self._raw else b"\n")])
        finally:
            self._pipe.close()
            if self._tap is not None:
                self._tap(None)

    def _emit(self, segments: list[tuple[bytes, bytes]]) -> None:
        """Write (text, tail) pairs from `split_segments` as one batch of prefixed lines."""
        out = []
        for text, tail in segments:
            if self._tap is not None:
                text = self._tap(text)
                if not text:
                    continue
                if tail == b"\n" and text.endswith(b"\n"):
                    tail = b""
                elif not tail and not self._raw and not text.endswith((b"\n", b"\r")):
                    tail = b"\n"  # a line the tap cut short (a remote rank's unfinished last line): ended here
            if self._raw and tail == CONTINUED:
                tail = b""
            out.append(self._prefix + text + tail)
        if out:
            self._writer.write(self._stream, b"".join(out), len(out))


def split_segments(buffer: bytearray) -> list[tuple[bytes, bytes]]:
    """Take what can be written now off the front of `buffer`, as (text, tail) pairs.

    `text` is the rank's bytes: a line with its "\\n" (or "\\r\\n"), a segment ending
    in a lone "\\r", or a `LINE_CAP` piece of a longer one, whose `tail` is
    `CONTINUED` (b"" for the others). Pieces are cut every `LINE_CAP` bytes from
    the start of a line, however the bytes were read. What is left in `buffer` is
    an unfinished line shorter than `LINE_CAP`.
    """
    segments: list[tuple[bytes, bytes]] = []
    start = 0
    newline, cr = buffer.find(b"\n"), buffer.find(b"\r")
    while newline >= 0 or cr >= 0:
        if cr >= 0 and (newline < 0 or cr < newline) and cr + 1 != newline:
            end = cr + 1  # a carriage return not followed by a newline: a redrawn line
        else:
            end = newline + 1  # a line, ending in "\n" or "\r\n"
        start = _pieces(buffer, start, end, segments)
        segments.append((bytes(buffer[start:end]), b""))
        start = end
        if 0 <= newline < start:
            newline = buffer.find(b"\n", start)
        if 0 <= cr < start:
            cr = buffer.find(b"\r", start)
    start = _pieces(buffer, start, len(buffer) + 1, segments)
    del buffer[:start]
    return segments


def _pieces(buffer: bytearray, start: int, end: int, segments: list[tuple[bytes, bytes]]) -> int:
    """Cut `LINE_CAP` pieces off `buffer[start:end]` while more than that is left; where the rest starts."""
    while end - start > LINE_CAP:
        cut = start + LINE_CAP
        nul = buffer.find(b"\0", cut - _REPORT_BYTES, cut)
        if nul > start:
            cut = nul
        segments.append((bytes(buffer[start:cut]), CONTINUED))
        start = cut
    return start


def pump_rank(
    rank: int, stdout: BinaryIO, stderr: BinaryIO, writer: LineWriter, prefix: bool = True,
    taps: tuple[Tap | None, Tap | None] = (None, None),
) -> list[Pump]:
    """Start pumping a rank's stdout and stderr pipes; `prefix=False` for `--no-prefix`.

    `taps` (stdout's, stderr's) see the lines first: a remote rank's keeper reports through them.
    """
    tag = f"[{rank}] ".encode() if prefix else b""
    return [Pump(stdout, writer.stdout, tag, writer, taps[0]), Pump(stderr, writer.stderr, tag, writer, taps[1])]
