"""Settings that reach sockets and memory: passed as parameters or through a function, never by
writing another module's globals."""

from __future__ import annotations

import errno
import socket

import numpy as np
import pytest

import ringdist as rd
from ringdist import buffers, channel
from ringdist.settings import Settings

from helpers import run_launcher

# A rank that counts its TCP connections whose buffers are (2 * RCV, 2 * SND): Linux doubles
# SO_RCVBUF and SO_SNDBUF for its bookkeeping.
COUNT_SIZED = """
import os, socket, sys
import numpy as np
import ringdist as rd

rcv, snd = (2 * int(v) for v in os.environ["RINGDIST_SOCKET_BUFFERS"].split(","))
g = rd.init()
rd.all_gather(np.arange(4) + g.rank())  # the ring is up
sized = 0
for fd in map(int, os.listdir("/proc/self/fd")):
    try:
        s = socket.socket(fileno=os.dup(fd))
    except OSError:
        continue  # not a socket
    with s:
        if s.type != socket.SOCK_STREAM:
            continue
        try:
            s.getpeername()
        except OSError:
            continue  # a listener
        got = s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF), s.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        sized += got == (rcv, snd)
print("sized", sized)
"""


def test_socket_buffer_sizes_from_the_environment_reach_the_ranks_data_connections(tmp_path):
    script = tmp_path / "count_sized.py"
    script.write_text(COUNT_SIZED)
    res = run_launcher(["-n", "2", str(script)], timeout=60,
                       env={"RINGDIST_SOCKET_BUFFERS": "200000,100000", "RINGDIST_TIMEOUT": "20"})
    assert res.returncode == 0, res.stdout + res.stderr
    counts = [int(line.split()[-1]) for line in res.stdout.splitlines() if "sized" in line]
    assert len(counts) == 2 and min(counts) >= 1, res.stdout + res.stderr


def _connected_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as lsock:
        a = socket.create_connection(lsock.getsockname(), timeout=5)
        b, _ = lsock.accept()
    return a, b


def _sizes(ch: channel.Channel) -> tuple[int, int]:
    return (ch.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
            ch.sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF))


def test_a_channel_takes_its_buffer_sizes_as_a_parameter_or_the_process_default():
    socks = [*_connected_pair(), *_connected_pair()]
    try:
        given = channel.Channel(socks[0], me=0, peer=1, group="g", role="right", buffers=(64 << 10, 32 << 10))
        assert _sizes(given) == (128 << 10, 64 << 10)
        channel.configure_defaults(Settings(socket_buffers=(96 << 10, 48 << 10)))
        by_default = channel.Channel(socks[2], me=0, peer=1, group="g", role="right")
        assert _sizes(by_default) == (192 << 10, 96 << 10)
        also_given = channel.Channel(socks[1], me=1, peer=0, group="g", role="left", buffers=(64 << 10, 32 << 10))
        assert _sizes(also_given) == (128 << 10, 64 << 10)  # a parameter wins over the default
    finally:
        channel.configure_defaults(Settings())
        for s in socks:
            s.close()


class _CappedSocket(socket.socket):
    """A socket whose buffers refuse sizes over macOS's default cap (kern.ipc.maxsockbuf 8 MiB, of
    which a buffer may take 2048/2304) with ENOBUFS, where Linux cuts them itself."""

    cap = 8 * (1 << 20) * 2048 // 2304

    def setsockopt(self, level, option, value, *rest):  # type: ignore[override]
        if level == socket.SOL_SOCKET and option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            self.asked.append((option, value))
            if value > self.cap:
                raise OSError(errno.ENOBUFS, "No buffer space available")
        return super().setsockopt(level, option, value, *rest)


def test_buffer_sizes_over_the_systems_cap_are_halved_until_taken():
    lsock = socket.create_server(("127.0.0.1", 0))
    sock = _CappedSocket(socket.AF_INET, socket.SOCK_STREAM)
    sock.asked = []
    try:
        sock.connect(lsock.getsockname())
        channel.configure(sock, (16 << 20, 32 << 20))
        assert sock.asked == [(socket.SO_RCVBUF, 16 << 20), (socket.SO_RCVBUF, 8 << 20), (socket.SO_RCVBUF, 4 << 20),
                              (socket.SO_SNDBUF, 32 << 20), (socket.SO_SNDBUF, 16 << 20), (socket.SO_SNDBUF, 8 << 20),
                              (socket.SO_SNDBUF, 4 << 20)], sock.asked
        sock.cap = 1000  # below the floor: a refusal is the error it was
        with pytest.raises(rd.PeerLostError, match="cannot set socket options: No buffer space available"):
            channel.configure(sock, (1 << 20, 0))
    finally:
        sock.close()
        lsock.close()


def test_the_buffer_cache_limit_is_set_through_configure():
    big = (buffers.MIN_BYTES // 8,)  # float64: the smallest size the cache serves
    try:
        buffers.configure(0)
        assert buffers.cache.empty(big, np.float64).flags.owndata  # a plain numpy array: nothing kept
        buffers.configure(1 << 30)
        assert not buffers.cache.empty(big, np.float64).flags.owndata  # a view of a cached block
    finally:
        buffers.configure(Settings().buffer_cache_mb * (1 << 20))


def test_a_channel_names_the_address_its_peer_dialed_from_not_just_its_first():
    # A peer listening on several addresses (one per network) dialed from 127.0.0.2: errors about
    # the connection named its first address, maybe on a network the connection does not use.
    lsock = socket.create_server(("127.0.0.1", 0))
    dialer = socket.socket()
    dialer.bind(("127.0.0.2", 0))
    dialer.connect(lsock.getsockname())
    accepted, _ = lsock.accept()
    try:
        listens = [("127.0.0.1", 4001), ("127.0.0.2", 4002)]
        ch = channel.Channel(accepted, me=0, peer=1, group="g", role="p2p-in", listens=listens)
        assert ch.describe() == "rank 1 (127.0.0.2:4002, p2p-in link of group 'g')"
        other = channel.Channel(dialer, me=1, peer=0, group="g", role="p2p-out", listens=[("127.0.0.3", 4003)])
        assert other.address == "127.0.0.3:4003"  # (none matches: the first)
    finally:
        for s in (lsock, dialer, accepted):
            s.close()


@pytest.mark.parametrize("raw, named", [("4096,4096", "RCV and SND"), ("65535,1048576", "RCV"), ("0,8192", "SND")])
def test_socket_buffers_under_one_loopback_segment_are_refused_naming_which(raw, named):
    # 4096 each made a 512 KiB all-sum on 2 loopback ranks take 10 s, waiting on TCP's timers
    with pytest.raises(rd.ConfigError, match=rf"RINGDIST_SOCKET_BUFFERS='{raw}': {named} must be 0 .* at least 65536"):
        Settings.from_env({"RINGDIST_SOCKET_BUFFERS": raw})
    assert Settings.from_env({"RINGDIST_SOCKET_BUFFERS": "65536,0"}).socket_buffers == (65536, 0)


SMALLEST_BUFFERS = """
import numpy as np
import ringdist as rd

g = rd.init()
x = np.arange(1 << 16, dtype=np.float64) * (g.rank() + 1)  # 512 KiB
assert np.array_equal(rd.all_sum(x), np.arange(1 << 16) * 6.0)
assert np.array_equal(rd.all_gather(x[:1 << 15]), np.concatenate([np.arange(1 << 15) * (r + 1.0) for r in range(3)]))
print("summed")
"""


def test_the_smallest_socket_buffers_taken_carry_a_ring_over_tcp(tmp_path):
    script = tmp_path / "smallest.py"
    script.write_text(SMALLEST_BUFFERS)
    res = run_launcher(["-n", "3", str(script)], timeout=90,
                       env={"RINGDIST_SOCKET_BUFFERS": "65536,65536", "RINGDIST_SHM": "0",
                            "RINGDIST_ALGO": "all_sum:ring,all_gather:ring", "RINGDIST_TIMEOUT": "30"})
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count("summed") == 3, res.stdout + res.stderr


def test_the_launcher_warns_of_a_socket_buffer_the_kernel_would_cut():
    # Linux takes at most net.core.rmem_max (wmem_max) for a socket without a word: asked more,
    # the job ran with less than RINGDIST_SOCKET_BUFFERS says.
    try:
        with open("/proc/sys/net/core/rmem_max") as f:
            limit = int(f.read())
    except OSError:
        pytest.skip("no /proc/sys/net/core here (not Linux)")
    over = run_launcher(["--dry-run", "-n", "1", "--", "true"], timeout=30,
                        env={"RINGDIST_SOCKET_BUFFERS": f"{limit + 1},0"})
    assert over.returncode == 0, over.stdout + over.stderr
    assert (f"warning: RINGDIST_SOCKET_BUFFERS asks {limit + 1} bytes of a socket's receive buffer; this machine "
            f"gives at most {limit} (net.core.rmem_max") in over.stderr, over.stderr
    if limit >= 65536:  # (the least size taken)
        within = run_launcher(["--dry-run", "-n", "1", "--", "true"], timeout=30,
                              env={"RINGDIST_SOCKET_BUFFERS": f"{limit},0"})
        assert within.returncode == 0 and "RINGDIST_SOCKET_BUFFERS" not in within.stderr, within.stderr
