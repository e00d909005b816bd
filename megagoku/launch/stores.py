"""The launch's TCP stores, bound to one address: loopback for a single-node launch, the master
address's interface for several nodes, never every interface.

torch's TCPStore has no authentication: whoever reaches its port can read and rewrite the
rendezvous state (and so the ranks and addresses every worker connects to). torch binds its
servers to all interfaces (`*:port`); here the rendezvous store is created by us on a socket
bound beforehand (`master_listen_fd`), and the workers' own store (rank 0's, which
`init_process_group` would open on all interfaces) is bound the same way in
`parallel/distributed.py` when `BIND_ENV` is set. Even so, on several nodes the port is open to
the cluster network: it must be reachable only from inside the cluster (firewall, private
network), which the docs say.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from datetime import timedelta

from torch.distributed import TCPStore
from torch.distributed.elastic.rendezvous import RendezvousParameters
from torch.distributed.elastic.rendezvous.c10d_rendezvous_backend import C10dRendezvousBackend
from torch.distributed.elastic.rendezvous.dynamic_rendezvous import create_handler
from torch.distributed.elastic.rendezvous.utils import _matches_machine_hostname

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
# Read by the workers (`parallel/distributed.py`): rank 0's store listens on the address
# MASTER_ADDR resolves to, not on every interface.
BIND_ENV = "MEGAGOKU_BIND_STORE"


def resolve(host: str) -> str:
    """The address `host` names on this machine (IPv4 first)."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    infos.sort(key=lambda i: i[0] != socket.AF_INET)
    return infos[0][4][0]


def listening_socket(address: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((address, port))
        sock.listen(4096)
    except OSError:
        sock.close()
        raise
    return sock


def hosted_store(address: str, port: int, timeout_s: float) -> TCPStore:
    """A TCPStore server listening on `address:port` only (port 0: a free one)."""
    sock = listening_socket(address, port)
    port = sock.getsockname()[1]
    # detach: the store owns the descriptor from now on.
    return TCPStore(address, port, is_master=True, wait_for_workers=False, multi_tenant=True,
                    timeout=timedelta(seconds=timeout_s), master_listen_fd=sock.detach())


def rendezvous(endpoint: str | None, nnodes: int, run_id: str, read_timeout_s: float = 60.0):
    """(rendezvous handler, endpoint) for torch's c10d rendezvous, with its store bound as the
    module says. One node: a store on 127.0.0.1 (the endpoint's port, else a free one). Several:
    the node whose name or address is the endpoint's host hosts the store on that host's address
    (the first of several emulated nodes on one machine; the others connect), every other node
    connects."""
    if nnodes == 1:
        port = int(endpoint.rsplit(":", 1)[1]) if endpoint else 0
        store = hosted_store(LOOPBACK, port, read_timeout_s)
        host, local_addr = LOOPBACK, LOOPBACK
    else:
        if not endpoint:
            raise SystemExit("error: megagoku launch: --nnodes > 1 needs --rdzv-endpoint "
                             "HOST:PORT (the first node)")
        host, port_text = endpoint.rsplit(":", 1)
        port = int(port_text)
        store = None
        if _matches_machine_hostname(host):
            try:
                store = hosted_store(resolve(host), port, read_timeout_s)
            except OSError:  # another launcher on this machine hosts it already
                store = None
        if store is None:
            store = TCPStore(host, port, is_master=False,
                             timeout=timedelta(seconds=read_timeout_s))
        local_addr = None  # the node's own name, as torch advertises it to the other nodes
    endpoint = f"{host}:{store.port}"
    params = RendezvousParameters(backend="c10d", endpoint=endpoint, run_id=run_id,
                                  min_nodes=nnodes, max_nodes=nnodes, local_addr=local_addr)
    handler = create_handler(store, C10dRendezvousBackend(store, run_id), params)
    return handler, endpoint
