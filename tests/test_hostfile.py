"""The hostfile parser: shipped files, defaults, MLX compatibility, placements and every error kind."""

from __future__ import annotations

import json
import re
import socket

import pytest

from helpers import HOSTFILES
from ringdist.errors import ConfigError
from ringdist_launch.hostfile import (
    Host,
    Hostfile,
    expand_placements,
    is_local_host,
    load_hostfile,
    parse_hostfile,
    parse_hosts_arg,
)


def write(tmp_path, text: str, name: str = "hosts.json") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# --- shipped hostfiles -------------------------------------------------------


def test_localhost_hostfiles():
    for slots in (2, 4):
        hf = load_hostfile(HOSTFILES / f"localhost-{slots}.json")
        assert hf.hosts == (Host(ssh="localhost", ips=("127.0.0.1",), slots=slots),)
        assert hf.slots == slots
        assert all(h.is_local for h in hf.hosts)


def test_loopback_hostfile_is_four_local_hosts_on_their_own_addresses():
    hf = load_hostfile(HOSTFILES / "loopback-4.json")
    placements = expand_placements(hf)
    assert [p.ips for p in placements] == [(f"127.0.0.{i}",) for i in range(1, 5)]
    assert [p.host for p in placements] == [f"127.0.0.{i}" for i in range(1, 5)]
    assert all(p.is_local and p.local_rank == 0 for p in placements)


def test_cluster_example_is_remote():
    hf = load_hostfile(HOSTFILES / "cluster-example.json")
    assert [h.ssh for h in hf.hosts] == ["node1", "node2"]
    assert not any(h.is_local for h in hf.hosts)
    assert hf.envs == (("OMP_NUM_THREADS", "1"),)
    assert hf.slots == 4


# --- accepted forms and defaults ----------------------------------------------


def test_bare_list_and_defaults():
    hf = parse_hostfile([{}, {"ssh": "node9", "ips": ["192.0.2.9"]}, {"ssh": "node8"}], "x.json")
    local, remote, unknown_ips = hf.hosts
    assert local == Host(ssh=None, ips=("127.0.0.1",), slots=1) and local.name == "127.0.0.1"
    assert remote == Host(ssh="node9", ips=("192.0.2.9",), slots=1) and not remote.is_local
    assert unknown_ips.ips == ()
    assert hf.envs == ()


def test_mlx_hostfile_is_accepted():
    mlx = {
        "backend": "ring",
        "envs": ["MLX_METAL_FAST_SYNCH=1"],
        "hosts": [
            {"ssh": "localhost", "ips": ["127.0.0.1"], "rdma": [None, "rdma_en2"]},
            {"ssh": "localhost", "ips": [], "rdma": []},
        ],
    }
    hf = parse_hostfile(mlx, "mlx.json")
    assert [h.ips for h in hf.hosts] == [("127.0.0.1",), ("127.0.0.1",)]
    assert hf.envs == (("MLX_METAL_FAST_SYNCH", "1"),)


def test_envs_keep_everything_after_the_first_equals_and_a_bare_name_is_set_empty():
    # (a bare NAME as mlx.launch takes it: exported empty; `--env` still wants NAME=value)
    hf = parse_hostfile({"hosts": [{}], "envs": ["A=b=c", "EMPTY=", "BARE"]})
    assert hf.envs == (("A", "b=c"), ("EMPTY", ""), ("BARE", ""))


def test_ipv6_addresses():
    hf = parse_hostfile([{"ips": ["::1", "fe80::1%lo"]}])
    assert hf.hosts[0].ips == ("::1", "fe80::1%lo")


# --- placements ----------------------------------------------------------------


def test_placements_are_host_order_then_slot_order():
    hf = parse_hostfile(
        [{"ssh": "a", "ips": ["192.0.2.1"], "slots": 2}, {"ssh": "b", "ips": ["192.0.2.2"], "slots": 3}]
    )
    got = [(p.rank, p.host_index, p.ssh, p.ips, p.local_rank) for p in expand_placements(hf)]
    assert got == [
        (0, 0, "a", ("192.0.2.1",), 0),
        (1, 0, "a", ("192.0.2.1",), 1),
        (2, 1, "b", ("192.0.2.2",), 0),
        (3, 1, "b", ("192.0.2.2",), 1),
        (4, 1, "b", ("192.0.2.2",), 2),
    ]


def test_placements_take_the_first_n_slots():
    hf = parse_hostfile([{"slots": 2}, {"ips": ["127.0.0.2"], "slots": 2}])
    assert [(p.host_index, p.local_rank) for p in expand_placements(hf, 3)] == [(0, 0), (0, 1), (1, 0)]


def test_local_rank_counts_ranks_on_the_same_machine_across_entries():
    def local_ranks(hosts, n=None):
        return [p.local_rank for p in expand_placements(parse_hostfile(hosts), n)]

    # The same ssh name twice is one machine, as torchrun's LOCAL_RANK counts it.
    assert local_ranks([{"ssh": "rdtest-a", "slots": 2}, {"ssh": "rdtest-b"}, {"ssh": "rdtest-a"}]) == [0, 1, 0, 2]
    # Local entries on the same ips are one machine, however they are spelt.
    assert local_ranks([{"slots": 2}, {"ssh": "localhost"}, {"ips": ["127.0.0.1"]}]) == [0, 1, 2, 3]
    same_name = [{"ssh": "localhost", "ips": ["127.0.0.2"]}, {"ssh": "localhost", "ips": ["127.0.0.3"]}]
    assert local_ranks(same_name) == [0, 1]
    # Local entries on different ips stand in for different machines (loopback-4.json).
    assert local_ranks([{"ips": ["127.0.0.2"], "slots": 2}, {"ips": ["127.0.0.3"]}, {"ips": ["127.0.0.2"]}]) == [
        0, 1, 0, 2]
    # A remote entry is never the same machine as a local one, nor as another ssh name.
    assert local_ranks([{"ssh": "rdtest-a", "ips": ["127.0.0.1"]}, {}, {"ssh": "rdtest-b", "ips": ["127.0.0.1"]}]) == [
        0, 0, 0]
    # -n takes the first slots; the count follows them.
    assert local_ranks([{"ssh": "rdtest-a"}, {"ssh": "rdtest-a", "slots": 3}], 3) == [0, 1, 2]
    assert [p.local_rank for p in expand_placements(parse_hosts_arg("localhost:2,localhost,127.0.0.2"))] == [
        0, 1, 2, 0]


def test_more_ranks_than_slots_is_an_error():
    hf = parse_hostfile([{"slots": 2}], "two.json")
    with pytest.raises(ConfigError, match=r"two\.json: 3 ranks requested but the hosts have 2 slots"):
        expand_placements(hf, 3)


# --- --hosts h1,h2 -------------------------------------------------------------


def test_hosts_argument():
    hf = parse_hosts_arg("localhost:2,127.0.0.2,node1,[::1]:3,::1,192.0.2.5:4")
    assert [(h.ssh, h.ips, h.slots) for h in hf.hosts] == [
        ("localhost", ("127.0.0.1",), 2),
        ("127.0.0.2", ("127.0.0.2",), 1),
        ("node1", (), 1),
        ("::1", ("::1",), 3),
        ("::1", ("::1",), 1),
        ("192.0.2.5", ("192.0.2.5",), 4),
    ]


@pytest.mark.parametrize("spec", ["", "a,,b", "a:0", "a:two", "[::1", "-oProxyCommand=x", "0.0.0.0", "224.0.0.1:2"])
def test_bad_hosts_argument(spec):
    with pytest.raises(ConfigError, match=r"^--hosts: "):
        parse_hosts_arg(spec)


# --- is_local_host ---------------------------------------------------------------


@pytest.mark.parametrize(
    "name", [None, "localhost", "LOCALHOST", "127.0.0.1", "127.1.2.3", "::1", "user@localhost", "[::1]"]
)
def test_local_names(name):
    assert is_local_host(name)


def test_this_machines_names_are_local():
    assert is_local_host(socket.gethostname())
    assert is_local_host(socket.getfqdn())


@pytest.mark.parametrize("name", ["192.0.2.1", "node1", "user@node1", "10.0.0.1"])
def test_remote_names(name):
    assert not is_local_host(name)


# --- malformed files: one ConfigError line naming file, entry and field ------------

MALFORMED = [
    ('{"hosts": [', r"not valid JSON: .*\(line 1, column 12\)"),
    ('{"hosts": [{"ssh": "a",}]}', r"not valid JSON: .*\(line 1, column \d+\)"),
    ('{\n "hosts": [\n  {"slots": 2\n ]\n}', r"not valid JSON: .*\(line 4, column 2\)"),
    ("", r"not valid JSON: .*\(line 1, column 1\)"),
    ('{"envs": []}', r'missing "hosts"'),
    ('"localhost"', r'expected an object with "hosts" or a list of hosts, got a string'),
    ("42", r"got a number"),
    ('{"hosts": {"ssh": "a"}}', r"hosts: expected a list of host objects, got an object"),
    ('{"hosts": []}', r"hosts: empty list; at least one host is needed"),
    ("[]", r"empty list; at least one host is needed"),
    ('{"hosts": ["localhost"]}', r"hosts\[0\]: expected a host object, got a string"),
    ('{"hosts": [{}, {}, {"slots": "two"}]}', r'hosts\[2\]\.slots: expected a positive integer, got "two"'),
    ('{"hosts": [{"slots": 0}]}', r"hosts\[0\]\.slots: expected a positive integer, got 0"),
    ('{"hosts": [{"slots": 1.5}]}', r"hosts\[0\]\.slots: expected a positive integer, got 1\.5"),
    ('{"hosts": [{"slots": true}]}', r"hosts\[0\]\.slots: expected a positive integer, got true"),
    ('[{}, {"ssh": 7}]', r"\[1\]\.ssh: expected a string, got 7"),
    ('[{"ssh": ""}]', r'\[0\]\.ssh: expected a host name, got ""'),
    ('[{"ssh": "-oProxyCommand=x"}]', r"\[0\]\.ssh: expected a host name"),
    ('[{"ips": "127.0.0.1"}]', r'\[0\]\.ips: expected a list of IP addresses, got "127\.0\.0\.1"'),
    ('[{"ips": ["127.0.0.1", "300.1.1.1"]}]', r'\[0\]\.ips\[1\]: expected an IP address, got "300\.1\.1\.1"'),
    ('[{"ips": ["node1"]}]', r'\[0\]\.ips\[0\]: expected an IP address, got "node1"'),
    ('[{"ips": [1]}]', r"\[0\]\.ips\[0\]: expected an IP address, got 1"),
    ('[{"ips": ["0.0.0.0"]}]', r"\[0\]\.ips\[0\]: 0\.0\.0\.0 means every interface, not an address peers can dial: "
                             r"give an address of that host \(127\.0\.0\.1 for this machine\)"),
    ('[{"ips": ["127.0.0.1", "::"]}]', r"\[0\]\.ips\[1\]: :: means every interface"),
    ('[{"ips": ["255.255.255.255"]}]', r"\[0\]\.ips\[0\]: 255\.255\.255\.255 is the broadcast address"),
    ('[{"ips": ["224.0.0.1"]}]', r"\[0\]\.ips\[0\]: 224\.0\.0\.1 is a multicast group"),
    ('[{"ips": ["ff02::1"]}]', r"\[0\]\.ips\[0\]: ff02::1 is a multicast group"),
    ('[{"ips": ["::ffff:239.1.2.3"]}]', r"::ffff:239\.1\.2\.3 is a multicast group"),
    ('{"hosts": [{"ips": ["127.0.0.1"], "slots": 1, "slots": 2}]}', r'field "slots" appears twice in one object'),
    ('{"hosts": [{}], "hosts": [{}, {}]}', r'field "hosts" appears twice in one object'),
    ('{"hosts": [{}], "envs": "A=1"}', r'envs: expected a list of "NAME=value" strings'),
    ('{"hosts": [{}], "envs": ["A=1", "NO-EQUALS"]}', r'envs\[1\]: expected "NAME=value", got "NO-EQUALS"'),
    ('{"hosts": [{}], "envs": ["1A=x"]}', r'envs\[0\]: expected "NAME=value"'),
    ('{"hosts": [{}], "envs": [3]}', r'envs\[0\]: expected "NAME=value", got 3'),
    ('{"hosts": [{"ssh": "a", "slot": 2}]}', r'hosts\[0\]: unknown field "slot" \(expected ssh, ips, slots\)'),
    ('{"host": [{}]}', r'top level: unknown field "host" \(expected hosts, envs\)'),
]


@pytest.mark.parametrize("text, message", MALFORMED)
def test_malformed_hostfile(tmp_path, text, message):
    path = write(tmp_path, text, "bad.json")
    with pytest.raises(ConfigError) as info:
        load_hostfile(path)
    text = str(info.value)
    assert text.startswith(f"{path}: "), text
    assert "\n" not in text
    assert re.search(message, text), text


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.json: cannot read hostfile: No such file"):
        load_hostfile(tmp_path / "nope.json")


def test_not_utf8(tmp_path):
    path = tmp_path / "latin1.json"
    path.write_bytes(b'[{"ssh": "h\xe9"}]')
    with pytest.raises(ConfigError, match=r"latin1\.json: not UTF-8 text"):
        load_hostfile(path)


def test_a_byte_order_mark_is_read_past(tmp_path):
    # Some Windows editors begin UTF-8 files with one; json.loads refused it ("Unexpected UTF-8 BOM").
    path = tmp_path / "bom.json"
    path.write_bytes(b'\xef\xbb\xbf{"hosts": [{"ssh": "localhost", "slots": 2}]}')
    assert load_hostfile(path).slots == 2


def test_long_bad_values_are_shortened():
    with pytest.raises(ConfigError) as info:
        parse_hostfile([{"ssh": "a", "ips": ["x" * 500]}], "f.json")
    assert len(str(info.value)) < 120


def test_round_trip_through_json(tmp_path):
    data = {"hosts": [{"ssh": "localhost", "ips": ["127.0.0.1"], "slots": 3}], "envs": ["A=1"]}
    hf = load_hostfile(write(tmp_path, json.dumps(data)))
    assert isinstance(hf, Hostfile) and hf.slots == 3 and hf.envs == (("A", "1"),)


def test_an_error_about_hosts_given_as_one_name_that_is_no_file_says_it_was_taken_as_a_host(tmp_path):
    # `--hosts hosts.jsn` (a typo) was read as a host name, and the error spoke of addresses only.
    from ringdist_launch.launch import _hosts_hint

    assert _hosts_hint("hosts.jsn") == (" (--hosts hosts.jsn: no file of that name here, so it was taken as a host "
                                        "name; a hostfile is given by its path, or named *.json)")
    real = tmp_path / "hosts"
    real.write_text("{}")
    assert _hosts_hint(str(real)) == "" and _hosts_hint("node1,node2") == "" and _hosts_hint(None) == ""
    assert _hosts_hint("localhost:4") == "" and _hosts_hint("::1") == ""


def test_a_host_name_that_does_not_resolve_gets_the_hint_too(monkeypatch, capsys, tmp_path):
    # The hint went only with usage errors: a mistyped hostfile's name, which no name service
    # knows (the common case), said only "cannot resolve". (No lookup is made here.)
    from ringdist_launch import cli, launch
    from ringdist_launch.route import UnreachableHost

    def unresolvable(plan, *args):
        raise UnreachableHost(f"host {plan.ranks[0].placement.ssh!r}: cannot resolve it (no such host name)")

    monkeypatch.setattr(launch, "choose_rendezvous", unresolvable)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "job.py").write_text("")
    assert cli.main(["--hosts", "hosts.jsn", "job.py"]) == 255
    err = capsys.readouterr().err
    assert "cannot resolve" in err and "(--hosts hosts.jsn: no file of that name here, so it was taken" in err, err
