"""Rank output: copy each rank's stdout/stderr line by line to the launcher's, prefixed `[r] `.

One reader thread per pipe; every line is written whole and flushed under one
lock shared by both streams (and by the launcher's own messages), so lines
never interleave mid-line even when stdout and stderr are the same terminal.
Bytes are copied as they are, so output that is not UTF-8 passes unchanged.
"""

from __future__ import annotations

import os
import threading
from typing import BinaryIO, Callable, Optional

# Sees each line read (None at end of file) and returns what to write (None: nothing).
Tap = Callable[[Optional[bytes]], Optional[bytes]]


class LineWriter:
    """Writes whole lines to the launcher's stdout or stderr, one at a time."""

    def __init__(self, stdout: BinaryIO, stderr: BinaryIO) -> None:
        self.stdout = stdout
        self.stderr = stderr
        self._lock = threading.Lock()

    def write(self, stream: BinaryIO, line: bytes) -> None:
        """Write one complete line (ending in a newline) and flush it."""
        with self._lock:
            try:
                stream.write(line)
                stream.flush()
            except BrokenPipeError:
                _discard_from_now_on(stream)
            except ValueError:  # the stream was closed under us
                pass

    def message(self, text: str) -> None:
        """A line from the launcher itself, on stderr."""
        self.write(self.stderr, text.encode("utf-8", "replace") + b"\n")


class Pump:
    """Copies one rank pipe to a launcher stream until the pipe closes."""

    def __init__(self, pipe: BinaryIO, stream: BinaryIO, prefix: bytes, writer: LineWriter,
                 tap: Tap | None = None) -> None:
        self._pipe = pipe
        self._stream = stream
        self._prefix = prefix
        self._writer = writer
        self._tap = tap
        self._thread = threading.Thread(target=self._run, name=f"pump {prefix!r}", daemon=True)
        self._thread.start()

    def join(self, timeout: float) -> bool:
        """Wait up to `timeout` s for the pipe to reach end of file; True if it did."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        try:
            for line in iter(self._pipe.readline, b""):
                if self._tap is not None:
                    line = self._tap(line)
                    if not line:
                        continue
                if not line.endswith(b"\n"):
                    line += b"\n"
                self._writer.write(self._stream, self._prefix + line)
        finally:
            self._pipe.close()
            if self._tap is not None:
                self._tap(None)


def pump_rank(
    rank: int, stdout: BinaryIO, stderr: BinaryIO, writer: LineWriter, prefix: bool = True,
    taps: tuple[Tap | None, Tap | None] = (None, None),
) -> list[Pump]:
    """Start pumping a rank's stdout and stderr pipes; `prefix=False` for `--no-prefix`.

    `taps` (stdout's, stderr's) see the lines first: a remote rank's keeper reports through them.
    """
    tag = f"[{rank}] ".encode() if prefix else b""
    return [Pump(stdout, writer.stdout, tag, writer, taps[0]), Pump(stderr, writer.stderr, tag, writer, taps[1])]


def _discard_from_now_on(stream: BinaryIO) -> None:
    """The reader of `stream` went away (`| head`): drop further output instead of failing."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass
