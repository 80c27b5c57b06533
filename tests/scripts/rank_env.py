"""Prints one JSON line describing this rank: launcher variables, cwd, argv, chosen extra variables.

The job secret itself is never printed, only its length and a short digest, so
tests can check that every rank got the same secret without leaking it.
"""

import hashlib
import json
import os
import sys

NAMES = [
    "RINGDIST_RANK", "RINGDIST_WORLD_SIZE", "RINGDIST_LOCAL_RANK", "RINGDIST_LOCAL_WORLD_SIZE", "RINGDIST_RENDEZVOUS",
    "RINGDIST_BIND", "RINGDIST_HOST", "RINGDIST_VERBOSE", "RANK", "WORLD_SIZE", "LOCAL_RANK",
    "PYTHONUNBUFFERED", "FOO", "BAR",
]
secret = os.environ.get("RINGDIST_SECRET", "")
print(json.dumps({
    "env": {name: os.environ.get(name) for name in NAMES},
    "secret_len": len(secret),
    "secret_digest": hashlib.sha256(secret.encode()).hexdigest()[:16],
    "cwd": os.getcwd(),
    "argv": sys.argv[1:],
    "pid": os.getpid(),
}))
