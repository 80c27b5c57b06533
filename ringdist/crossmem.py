"""Cross-memory reads: one copy from a peer process's memory straight into this one's.

Linux's `process_vm_readv` copies bytes out of another process's address space, as Open
MPI's shared-memory transport does for large messages ("CMA"). A byte read this way costs
one copy by the kernel, where passing it through a shared segment costs two by the CPU
(into the segment, out of it); and the reader's memory holds only its own result (mapping
a peer's buffers would count them in its resident memory too).

The kernel allows it only where this process could trace the other: the same user, and no
Yama restriction (`kernel.yama.ptrace_scope` 1 allows only a process's ancestors) or
seccomp filter (some container runtimes) in the way. So the shared-memory link tries one
read from every peer when the group is made (`ringdist.shm`), and the algorithms use it
only where every rank of the group could read every peer (`algorithms/shm.py`);
elsewhere they pass the bytes through the segments.
"""

from __future__ import annotations

import ctypes
import errno
import sys
from typing import Any

import numpy as np

_readv: Any = None


class _IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


def supported() -> bool:
    """Whether this system has `process_vm_readv` (Linux with glibc or musl)."""
    global _readv
    if _readv is not None:
        return True
    if not sys.platform.startswith("linux"):
        return False
    fn = getattr(ctypes.CDLL(None, use_errno=True), "process_vm_readv", None)
    if fn is None:
        return False
    fn.argtypes = [ctypes.c_int, ctypes.POINTER(_IoVec), ctypes.c_ulong, ctypes.POINTER(_IoVec),
                   ctypes.c_ulong, ctypes.c_ulong]
    fn.restype = ctypes.c_ssize_t
    _readv = fn
    return True


def address(buf: Any) -> int:
    """Where a contiguous buffer (numpy array, memoryview, mmap) lies in this process."""
    if isinstance(buf, np.ndarray):
        return int(buf.ctypes.data)
    return int(np.frombuffer(buf, np.uint8).ctypes.data) if len(memoryview(buf)) else 0


def read(pid: int, into: memoryview, remote: int) -> int:
    """Fill `into` (writable, contiguous) with len(into) bytes at address `remote` of process
    `pid`: 0, or the kernel's errno where it refused (ESRCH: the process is gone; EPERM: not
    allowed to read it; EFAULT: no such memory there). Nothing is raised: the caller names
    the peer and the call."""
    want = len(into)
    done = 0
    here = address(into) if want else 0
    local, far = _IoVec(), _IoVec()
    while done < want:
        local.base, local.len = here + done, want - done
        far.base, far.len = remote + done, want - done
        got = _readv(pid, ctypes.byref(local), 1, ctypes.byref(far), 1, 0)
        if got < 0:
            return ctypes.get_errno() or errno.EIO
        if got == 0:  # a partial read stops at the first page it cannot read
            return errno.EFAULT
        done += got
    return 0


def reads(pid: int, remote: int, expected: bytes) -> bool:
    """Whether the bytes at `remote` in process `pid` can be read from here and are `expected`
    (a process id names another process in another pid namespace: the bytes tell)."""
    got = bytearray(len(expected))
    return read(pid, memoryview(got), remote) == 0 and bytes(got) == expected
