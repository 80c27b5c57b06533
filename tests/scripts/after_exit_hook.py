"""Code that runs after ringdist's exit hook: an exit handler registered before ringdist was
imported (handlers run last-registered first). Its calls get errors saying ringdist shut down:
init() must not register this rank at the rendezvous again (or, under a scheduler, make a new
world), nor start threads while the interpreter finalizes. `--no-init`: the program never
called init() before the hook ran."""

import atexit
import sys
import time


def late() -> None:
    import numpy as np
    import ringdist as rd

    began = time.monotonic()
    for name, call in (("init", lambda: rd.init().size()), ("all_sum", lambda: rd.all_sum(np.ones(1))),
                       ("split", lambda: rd.init().split(0))):
        try:
            print(f"{name}: returned {call()}", flush=True)
        except Exception as exc:  # noqa: BLE001 - what the late code gets is the test's subject
            print(f"{name}: {type(exc).__name__}: {exc}", flush=True)
    print(f"late calls took {time.monotonic() - began:.1f} s", flush=True)


atexit.register(late)

import numpy as np  # noqa: E402
import ringdist as rd  # noqa: E402

if "--no-init" not in sys.argv:
    world = rd.init()
    sub = world.split(0)
    print("main", rd.all_sum(np.ones(1), group=sub)[0] == world.size(), flush=True)
