"""Rank 1 plays a member whose frames are not ringdist's own; rank 0 receives and reports.

    rogue_header.py MODE FIELDS

FIELDS: a Python dict literal merged into the header of rank 1's first frame (its message
to rank 0). MODE: `recv` (rank 0: recv(None, None, 1)); `hold` (rank 1 sends tag 5, then 7;
rank 0 receives tag 7 first, so the tag-5 message is read ahead and held); `trickle` (rank 1
sends a header's first bytes and then one byte a second: rank 0's all_sum, timeout 2 s).
Rank 0 prints `raised <Type>: <message>` or `returned <value>`.
"""
import ast
import sys
import time

import msgpack
import numpy as np

import ringdist as rd
from ringdist import channel, wire

mode, fields = sys.argv[1], ast.literal_eval(sys.argv[2])
g = rd.init()
rd.barrier()
if g.rank() == 1:
    original, done = channel.Channel.sendmsg, []

    def sendmsg(self, buffers, op=""):
        if done:
            return original(self, buffers, op)
        done.append(True)
        data = b"".join(bytes(b) for b in buffers)
        _, kind, n = wire.PREFIX.unpack(data[:wire.PREFIX_SIZE])
        header = msgpack.unpackb(data[wire.PREFIX_SIZE:wire.PREFIX_SIZE + n])
        header.update(fields)
        body = msgpack.packb(header, use_bin_type=True)
        frame = wire.PREFIX.pack(b"RD", kind, len(body)) + body + data[wire.PREFIX_SIZE + n:]
        self.sock.setblocking(True)
        if mode == "trickle":
            try:
                self.sock.sendall(frame[:wire.PREFIX_SIZE + 1])
                for byte in frame[wire.PREFIX_SIZE + 1:wire.PREFIX_SIZE + 20]:
                    time.sleep(1.0)
                    self.sock.sendall(bytes([byte]))
            except OSError:
                pass  # rank 0 gave up and left
        else:
            self.sock.sendall(frame)
        self.sock.setblocking(False)
        return len(data)

    channel.Channel.sendmsg = sendmsg
    try:
        if mode == "trickle":
            rd.all_sum(np.ones(4), timeout=30)
        else:
            rd.send(np.arange(4, dtype=np.float32), 0, tag=5)
            if mode == "hold":
                rd.send(np.arange(4, dtype=np.float32), 0, tag=7)
    except rd.RingError:
        pass
    time.sleep(2)
else:
    started = time.monotonic()
    try:
        if mode == "trickle":
            got = rd.all_sum(np.ones(4), timeout=2)
        elif mode == "hold":
            rd.recv(None, None, 1, tag=7)
            got = rd.recv(None, None, 1, tag=5)
        else:
            got = rd.recv(None, None, 1)
        print(f"returned {got!r}", flush=True)
    except Exception as exc:
        print(f"raised {type(exc).__name__} after {time.monotonic() - started:.1f} s: {exc}", flush=True)
