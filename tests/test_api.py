"""The public surface: __all__, the exception tree, and the documented signatures."""

from __future__ import annotations

import inspect

import ringdist as rd

PUBLIC = {
    "init", "is_available", "Group", "all_gather", "all_sum", "all_max", "all_min", "all_prod",
    "sum_scatter", "broadcast", "barrier", "send", "recv", "recv_like", "Work",
    "gather", "scatter", "reduce", "all_to_all", "all_gather_object", "broadcast_object", "send_object",
    "recv_object", "scan", "gather_object", "scatter_object", "all_reduce", "reduce_scatter",
    "recv_any", "recv_object_any", "wait_any", "wait_all", "all_maxloc", "all_minloc",
    "sendrecv", "Grid", "dims_create", "ANY_TAG", "TAG_MAX", "Status",
    "RingError", "ConfigError", "ConnectError", "AuthError", "ProtocolError", "PeerLostError",
    "RingTimeoutError", "MismatchError", "GroupBrokenError", "__version__",
}


def test_all_lists_exactly_the_public_api():
    assert set(rd.__all__) == PUBLIC
    for name in rd.__all__:
        assert hasattr(rd, name), name


def test_dir_offers_the_api_and_not_the_modules_it_uses():
    assert set(dir(rd)) == PUBLIC


def test_a_group_cannot_be_pickled_and_says_why():
    import pickle

    import numpy as np
    import pytest
    from harness import RankFailed, run_ranks

    with pytest.raises(TypeError, match=r"rank 0: a Group cannot be pickled or sent \(group 'world'\): it is this "
                                        r"process's connections; every rank makes its own"):
        pickle.dumps(rd.init())

    def rank(g):
        if g.rank() == 0:
            rd.send_object(g, 1, group=g)
        else:
            rd.recv_object(0, group=g)
        return rd.all_sum(np.ones(2), group=g)

    with pytest.raises(RankFailed) as failed:
        run_ranks(2, rank)
    sender, receiver = failed.value.errors
    assert isinstance(sender, ValueError) and "a Group cannot be pickled or sent" in str(sender), sender
    assert isinstance(receiver, ValueError) and "rank 0 could not send its object" in str(receiver) and \
        "pickled or sent" in str(receiver), receiver


def test_exception_tree():
    assert issubclass(rd.RingError, RuntimeError)
    for name in PUBLIC:
        obj = getattr(rd, name)
        if isinstance(obj, type) and name.endswith("Error") and obj is not rd.RingError:
            assert issubclass(obj, rd.RingError), name
    assert issubclass(rd.RingTimeoutError, TimeoutError)


def test_collectives_take_group_as_keyword_only():
    for name in ("all_gather", "all_sum", "all_max", "all_min", "all_prod", "sum_scatter", "broadcast",
                 "barrier", "send", "recv", "recv_like", "gather", "scatter", "reduce", "all_to_all",
                 "all_gather_object", "broadcast_object", "send_object", "recv_object", "scan", "gather_object",
                 "scatter_object", "all_reduce", "reduce_scatter", "recv_any", "recv_object_any", "all_maxloc", "all_minloc",
                 "sendrecv"):
        params = inspect.signature(getattr(rd, name)).parameters
        for keyword in ("group", "timeout"):
            assert params[keyword].kind is inspect.Parameter.KEYWORD_ONLY and params[keyword].default is None, name
        param = params["async_op"]
        assert param.kind is inspect.Parameter.KEYWORD_ONLY and param.default is False, name
    for name in ("gather", "scatter", "reduce", "gather_object", "scatter_object"):
        assert inspect.signature(getattr(rd, name)).parameters["root"].default == 0, name
    for name in ("reduce", "all_reduce", "reduce_scatter"):
        assert inspect.signature(getattr(rd, name)).parameters["op"].default == "sum", name
    assert inspect.signature(rd.all_to_all).parameters["splits"].default is None
    assert inspect.signature(rd.reduce_scatter).parameters["counts"].default is None
    assert inspect.signature(rd.all_gather).parameters["uneven"].default is False
    scan = inspect.signature(rd.scan).parameters
    assert scan["op"].default == "sum" and scan["exclusive"].default is False
    assert inspect.signature(rd.init).parameters["strict"].default is False
    assert list(inspect.signature(rd.Group.split).parameters) == ["self", "color", "key"]


def test_settings_read_from_the_environment_with_errors_that_name_the_variable():
    import pytest

    from ringdist.settings import Settings

    base = Settings.from_env({})
    assert (base.timeout, base.lanes, base.direct_max, base.spin_us) == (300.0, 1, None, 0.0)
    tuned = Settings.from_env({"RINGDIST_DIRECT_MAX": "0", "RINGDIST_LANES": "2", "RINGDIST_TIMEOUT": "2.5"})
    assert (tuned.direct_max, tuned.lanes, tuned.timeout) == (0, 2, 2.5)
    assert Settings.from_env({"RINGDIST_DIRECT_MAX": "1048576"}).direct_max == 1 << 20
    assert base.socket_buffers == (2 << 20, 1 << 20)
    assert Settings.from_env({"RINGDIST_SOCKET_BUFFERS": "0,0"}).socket_buffers == (0, 0)
    assert (base.directions, Settings.from_env({"RINGDIST_DIRECTIONS": "1"}).directions) == (0, 1)
    assert (base.max_object_bytes, Settings.from_env({"RINGDIST_MAX_OBJECT_BYTES": "4096"}).max_object_bytes) == (
        1 << 30, 4096)
    for name, bad in [("RINGDIST_DIRECT_MAX", "-1"), ("RINGDIST_DIRECT_MAX", "1.5"), ("RINGDIST_DIRECT_MAX", "64K"),
                      ("RINGDIST_SOCKET_BUFFERS", "4M"), ("RINGDIST_SOCKET_BUFFERS", "1,2,3"),
                      ("RINGDIST_LANES", "0"), ("RINGDIST_LANES", "17"), ("RINGDIST_TIMEOUT", "0"),
                      ("RINGDIST_DIRECTIONS", "3"), ("RINGDIST_DIRECTIONS", "both"),
                      ("RINGDIST_MAX_OBJECT_BYTES", "0"), ("RINGDIST_MAX_OBJECT_BYTES", "1.5")]:
        with pytest.raises(rd.ConfigError, match=name):
            Settings.from_env({name: bad})


def test_spin_defaults_follow_how_many_ranks_share_the_cores():
    import os

    from ringdist.settings import Settings

    cores = len(os.sched_getaffinity(0))
    own_core = Settings.from_env({"RINGDIST_LOCAL_WORLD_SIZE": str(cores)})
    assert (own_core.spin_us, own_core.spin_yield) == (2000.0, False)
    shared = Settings.from_env({"RINGDIST_LOCAL_WORLD_SIZE": str(cores + 1)})
    assert (shared.spin_us, shared.spin_yield) == (200.0, True)
    chosen = Settings.from_env({"RINGDIST_LOCAL_WORLD_SIZE": str(cores + 1), "RINGDIST_SPIN_US": "0"})
    assert (chosen.spin_us, chosen.spin_yield) == (0.0, True)
