"""A member of the job (it has the secret) whose frames are not ringdist's own: the rank that
reads them raises a RingError naming it, at once, and no byte of theirs can crash it."""

from __future__ import annotations

import errno
import os
import re

import pytest

from helpers import SCRIPTS, run_launcher
from ringdist import channel
from ringdist.errors import ProtocolError

PEER = r"rank 1 \(127\.0\.0\.1:\d+, p2p-in link of group 'world'\)"


def _rank_0(mode: str, fields: str, **env: str) -> str:
    result = run_launcher(["-n", "2", str(SCRIPTS / "rogue_header.py"), mode, fields], timeout=60,
                          env={"RINGDIST_TIMEOUT": "10", **env})
    lines = [line for line in result.stdout.splitlines() if line.startswith("[0] ")]
    assert len(lines) == 1, result.stdout + result.stderr
    return lines[0]


@pytest.mark.parametrize("mode,fields,said", [
    # An object dtype's bytes landed as pointers: using them crashed the process (SIGSEGV).
    ("recv", "{'dtype': '|O', 'shape': [2]}", rf"ProtocolError .*: rank 0: {PEER} sends dtype '\|O', which no "),
    ("hold", "{'dtype': '|O'}", rf"ProtocolError .*: rank 0: {PEER} sends dtype '\|O', which no ringdist rank"),
    ("hold", "{'dtype': '<U0'}", rf"ProtocolError .*: rank 0: {PEER} sends dtype '<U0', which no ringdist rank"),
    # Shapes no array can have were a ValueError, not a RingError.
    ("recv", "{'shape': [4611686018427387904]}", r"ProtocolError .*: rank 0: recv: rank 1 declares shape="
                                                  r"\(4611686018427387904,\), dtype=float32, which no array can"),
    ("recv", "{'shape': [18446744073709551615]}", r"ProtocolError .*: rank 0: recv: rank 1 declares shape="),
    # A header that does not decode named neither rank.
    ("recv", "{'seq': 'x'}", rf"ProtocolError .*: rank 0: {PEER} sent a HEADER frame that is not ringdist's: "
                             r"field 'seq' has type str"),
])
def test_a_header_no_rank_sends_is_a_protocol_error_naming_its_sender(mode, fields, said):
    line = _rank_0(mode, fields)
    assert re.match(r"\[0\] raised " + said, line), line


def test_a_header_trickled_a_byte_a_second_is_a_stall():
    # Each byte of a header that never completes counted as progress: RINGDIST_TIMEOUT=2 took 21 s.
    line = _rank_0("trickle", "{'pad': '" + "x" * 3000 + "'}", RINGDIST_SHM="0")
    m = re.match(r"\[0\] raised RingTimeoutError after ([\d.]+) s: rank 0: all_sum made no progress for 2 s: "
                 r"receiving from rank 1 .*header not yet received", line)
    assert m and float(m.group(1)) < 8, line


@pytest.mark.skipif(not hasattr(os, "memfd_create"), reason="memory files are Linux's")
def test_a_segment_is_sealed_at_its_size_and_an_unsealed_one_is_refused():
    # A member that shrank its segment under a peer's mapping killed that peer (SIGBUS).
    fd, mem = channel.make_segment(1 << 16, "test")
    try:
        with pytest.raises(OSError) as refused:
            os.ftruncate(fd, 0)
        assert refused.value.errno == errno.EPERM
        mapped = channel.map_segment(os.dup(fd), 1 << 16, "rank 1", sealed=True)
        mapped.close()
    finally:
        mem.close()
        os.close(fd)
    loose = os.memfd_create("loose", os.MFD_CLOEXEC)
    os.ftruncate(loose, 1 << 16)
    with pytest.raises(ProtocolError, match="rank 1: shared memory that could still be resized"):
        channel.map_segment(loose, 1 << 16, "rank 1", sealed=True)
