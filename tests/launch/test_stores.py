"""The launch's stores listen on one address (`launch/stores.py`, and rank 0's store in
`parallel/distributed.py`): 127.0.0.1 for one node, never every interface. The end-to-end check
of every socket of a launch is in test_launcher.py."""

import os
import socket
from datetime import timedelta
from pathlib import Path

from megagoku.launch import stores
from megagoku.parallel import distributed


def listening(pid: int = os.getpid()) -> set[tuple[str, int]]:
    """(address, port) of the TCP sockets this process listens on, from /proc."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    out = set()
    for table, width in (("tcp", 8), ("tcp6", 32)):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != "0A" or inode not in inodes:  # 0A: LISTEN
                continue
            hex_addr, hex_port = local.split(":")
            raw = bytes.fromhex(hex_addr)
            if width == 8:
                address = socket.inet_ntop(socket.AF_INET, raw[::-1])
            else:
                address = socket.inet_ntop(socket.AF_INET6, b"".join(
                    raw[i:i + 4][::-1] for i in range(0, 16, 4)))
            out.add((address, int(hex_port, 16)))
    return out


def test_a_single_node_rendezvous_store_listens_on_loopback_only():
    handler, endpoint = stores.rendezvous(None, 1, "test-run")
    try:
        port = int(endpoint.rsplit(":", 1)[1])
        assert endpoint.startswith("127.0.0.1:")
        assert {a for a, p in listening() if p == port} == {"127.0.0.1"}
    finally:
        handler.shutdown()


def test_a_multi_node_store_listens_on_the_master_address_only():
    port = distributed_free_port()
    handler, endpoint = stores.rendezvous(f"localhost:{port}", 2, "test-run")
    try:
        assert {a for a, p in listening() if p == port} == {stores.resolve("localhost")}
    finally:
        handler.shutdown()


def distributed_free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_rank_0s_store_listens_on_the_master_address_only():
    assert stores.BIND_ENV == distributed.BIND_STORE_ENV  # the launcher sets what ranks read
    port = distributed_free_port()
    info = distributed.LaunchInfo("torchrun", 0, 1, 0, "127.0.0.1", port)
    store = distributed._bound_store(info, timedelta(seconds=30))
    store.set("k", "v")
    assert {a for a, p in listening() if p == port} == {"127.0.0.1"}
    # Unbound, torch's own TCPStore listens on every interface: what this avoids.
    plain = distributed.dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    everywhere = {a for a, p in listening() if p == plain.port}
    assert everywhere and everywhere <= {"0.0.0.0", "::"}
    del store, plain
