"""Connecting to a Ray cluster (the optional extra bortengine[ray]; `ray` is imported here, by connect(), and by
the modules that use the connection: search.ray_executor, profiling.fleet). Nothing is imported at import time.

An address is "host:port" of the cluster's head, as `ray start --head` prints it, or "ray://host:port" for Ray
Client; without one, $RAY_ADDRESS; without that, a new local Ray instance bound to 127.0.0.1. The address is probed
first (a TCP connection and a gRPC greeting, each within a timeout), so a wrong one fails with a message instead
of Ray's long reconnection loop.
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
from typing import Any, Optional

from bortengine.errors import ClusterError

__all__ = ["connect", "probe_ray_address", "error_gist", "alive_nodes", "CONNECT_TIMEOUT", "HOW_TO_FIX"]

CONNECT_TIMEOUT = 10.0     # seconds for the address to accept a connection and answer the gRPC greeting
LOOPBACK = ("127.0.0.1", "localhost", "::1")
# an HTTP/2 client's connection preface and an empty SETTINGS frame: a gRPC server (Ray's GCS, a Ray Client
# server) answers with a SETTINGS frame of its own (frame type 0x4 at byte 3), anything else does not
HTTP2_GREETING = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
HOW_TO_FIX = ("Start the cluster with `ray start --head --port 6379` on its head node (and `ray start --address "
              "HEAD:6379` on the others) and give HEAD:6379 with --ray-address or RAY_ADDRESS; or give neither for a "
              "local Ray instance on this machine")


def error_gist(e: BaseException) -> str:
    """The last line of a Ray error's text: the cause (the first says only that something failed)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return lines[-1] if lines else type(e).__name__


def alive_nodes(ray: Any) -> dict[str, int]:
    """The nodes of a connected cluster that are alive: node id -> its CPUs (0 for a node that offers none)."""
    return {n["NodeID"]: int(n.get("Resources", {}).get("CPU", 0)) for n in ray.nodes() if n.get("Alive")}


def connect(address: Optional[str], timeout: float = CONNECT_TIMEOUT, num_cpus: Optional[int] = None
            ) -> tuple[Any, bool]:
    """The ray module, connected: to `address` (None: $RAY_ADDRESS, else a new local instance bound to 127.0.0.1 with
    num_cpus CPUs, default the CPUs this process may use), and whether this call connected it (the caller then
    disconnects with ray.shutdown()). A process already connected keeps its connection, whatever the address.
    ClusterError when ray is not installed or the address does not answer as a Ray cluster within `timeout`
    seconds."""
    given = address
    address = address or os.environ.get("RAY_ADDRESS") or None
    try:
        on_loopback = address is None or address == "auto" or _host_port(address)[0] in LOOPBACK
    except ClusterError as e:
        raise ClusterError(f"{e} (from $RAY_ADDRESS)" if given is None else str(e)) from None
    if on_loopback:
        # read when ray is imported: Ray otherwise replaces 127.0.0.1 by this machine's address, where neither a
        # local instance nor a cluster bound to loopback listens
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        import ray
    except ImportError:
        raise ClusterError("running on Ray needs Ray: pip install 'bortengine[ray]' (or give --executor local)") \
            from None
    if ray.is_initialized():
        return ray, False
    if address is None:
        kwargs = dict(address="local", num_cpus=num_cpus or len(os.sched_getaffinity(0)), include_dashboard=False,
                      _node_ip_address="127.0.0.1")
    elif address == "auto":   # Ray's own: the cluster `ray start` left its address for on this machine
        kwargs = dict(address=address)
    else:
        probe_ray_address(address, timeout)
        kwargs = dict(address=address)
    try:
        with _own_signal_handlers():
            ray.init(logging_level=logging.WARNING, log_to_driver=False, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as e:
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise ClusterError(f"cannot connect to {where}: {error_gist(e)}. {HOW_TO_FIX}") from None
    return ray, True


@contextlib.contextmanager
def _own_signal_handlers():
    """ray.init installs its own SIGTERM handler, which aborts the process (exit 134, no resume message) where the
    command's own stops the run as Ctrl-C does: the handlers in place before are put back."""
    main = threading.current_thread() is threading.main_thread()
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)} if main else {}
    try:
        yield
    finally:
        for sig, handler in before.items():
            if handler is not None:
                signal.signal(sig, handler)


def _host_port(address: str) -> tuple[str, int]:
    """(host, port) of "host:port", "[v6]:port" or "ray://host:port"; ClusterError otherwise."""
    text = address.split("://", 1)[-1].rstrip("/")
    host, _, port = text.rpartition(":")
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not host or not 0 < number < 65536:
        raise ClusterError(f"the Ray address {address!r} is not host:port (e.g. 10.0.0.5:6379, the address `ray "
                           f"start --head` prints)")
    return host.strip("[]"), number


def probe_ray_address(address: str, timeout: float = CONNECT_TIMEOUT) -> None:
    """ClusterError unless address accepts a TCP connection and answers the HTTP/2 greeting as a gRPC server (Ray's
    GCS or Ray Client server) does, each within `timeout` seconds: ray.init itself would retry for minutes."""
    host, port = _host_port(address)
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(HTTP2_GREETING)
            answer = b""
            while len(answer) < 9:
                chunk = s.recv(9 - len(answer))
                if not chunk:
                    break
                answer += chunk
    except socket.timeout:
        raise ClusterError(f"no Ray cluster answered at {address} within {timeout:.0f} s (a wrong host, or a "
                           f"firewall?). {HOW_TO_FIX}") from None
    except OSError as e:
        raise ClusterError(f"cannot reach a Ray cluster at {address}: {e.strerror or e}. {HOW_TO_FIX}") from None
    if len(answer) < 9 or answer[3] != 0x04:
        raise ClusterError(f"{address} answers, but not as a Ray cluster does (no gRPC server there): give the head "
                           f"node's GCS address, the one `ray start --head` prints (port 6379 by default). "
                           f"{HOW_TO_FIX}")
