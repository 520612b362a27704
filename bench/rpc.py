"""Benchmark: control round trip to the daemon (client call -> daemon -> reply) over loopback TCP.

The daemon runs on the reference simulated lab with its event stream flowing (1.3 M events/s
through the acquisition thread) and a recording running, as in a real session: that load is
what a control request competes with. Measures ``ping`` and ``status`` (the heaviest routine
call) and merges rpc_p50_ms / rpc_p99_ms into bench/results/host.json. References in the same
run: the same daemon with nothing flowing, and a bare ZeroMQ echo (the machine's floor).
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import zmq
from rich.console import Console
from rich.table import Table

from qnode.host.client import Client
from qnode.host.config import load_config
from qnode.host.daemon import Daemon

RESULTS = Path(__file__).resolve().parent / "results"
CALLS = 2000
WARM_UP = 100


def round_trips_ms(client: Client, method: str, n: int) -> np.ndarray:
    for _ in range(WARM_UP):
        client.call(method)
    out = np.empty(n)
    for i in range(n):
        t0 = time.perf_counter()
        client.call(method)
        out[i] = (time.perf_counter() - t0) * 1e3
    return out


def echo_round_trips_ms(n: int) -> np.ndarray:
    """The floor: a ROUTER thread that sends each request straight back (no JSON, no daemon),
    over the same loopback TCP, in the same process: what the machine itself gives."""
    ctx = zmq.Context.instance()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.bind("tcp://127.0.0.1:0")
    url = router.getsockopt_string(zmq.LAST_ENDPOINT)
    stop = threading.Event()

    def echo():
        while not stop.is_set():
            if router.poll(100):
                router.send_multipart(router.recv_multipart())

    thread = threading.Thread(target=echo, daemon=True)
    thread.start()
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(url)
    out = np.empty(n)
    try:
        for i in range(WARM_UP + n):
            t0 = time.perf_counter()
            dealer.send(b'{"id": 1, "method": "ping"}')
            dealer.recv()
            if i >= WARM_UP:
                out[i - WARM_UP] = (time.perf_counter() - t0) * 1e3
    finally:
        stop.set()
        thread.join()
        dealer.close()
        router.close()
    return out


def main():
    cfg = load_config()
    with tempfile.TemporaryDirectory() as tmp:
        with Daemon(cfg, control_url="tcp://127.0.0.1:0", stream_url="tcp://127.0.0.1:0") as daemon, \
                Client(daemon.control_url, timeout_s=10) as client:
            time.sleep(1.0)
            client.call("record.start", path=str(Path(tmp) / "bench.h5"))
            results = {m: round_trips_ms(client, m, CALLS) for m in ("ping", "status")}
            client.call("record.stop")
        # Reference in the same run: the same daemon code with nothing flowing (a replay that
        # has finished; the streaming daemon and its simulated lab are closed by now), so the
        # difference is what the event stream costs a request, and what is left is the
        # machine's (scheduling on shared cores) and the round trip's own cost.
        with Daemon(cfg, control_url="tcp://127.0.0.1:0", stream_url="tcp://127.0.0.1:0",
                    replay=Path(tmp) / "bench.h5", replay_speed=None) as idle, \
                Client(idle.control_url, timeout_s=10) as idle_client:
            while not idle.source.finished:
                time.sleep(0.1)
            results["ping (idle daemon)"] = round_trips_ms(idle_client, "ping", CALLS)
    results["bare ZeroMQ echo"] = echo_round_trips_ms(CALLS)
    table = Table(title=f"control round trip, {CALLS} calls each, daemon streaming and recording")
    for col in ("method", "p50 ms", "p99 ms", "max ms"):
        table.add_column(col, justify="right")
    for method, ms in results.items():
        table.add_row(method, f"{np.percentile(ms, 50):.3f}", f"{np.percentile(ms, 99):.3f}", f"{ms.max():.1f}")
    Console().print(table)
    keys = {"rpc_p50_ms": float(np.percentile(results["ping"], 50)),
            "rpc_p99_ms": float(np.percentile(results["ping"], 99)),
            "rpc_status_p99_ms": float(np.percentile(results["status"], 99)),
            "rpc_status_p50_ms": float(np.percentile(results["status"], 50)),
            "rpc_idle_p50_ms": float(np.percentile(results["ping (idle daemon)"], 50)),
            "rpc_idle_p99_ms": float(np.percentile(results["ping (idle daemon)"], 99)),
            "rpc_echo_p50_ms": float(np.percentile(results["bare ZeroMQ echo"], 50)),
            "rpc_echo_p99_ms": float(np.percentile(results["bare ZeroMQ echo"], 99)), "rpc_calls": CALLS,
            "rpc_load_average_1min": os.getloadavg()[0]}
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "host.json"
    previous = json.loads(path.read_text()) if path.exists() else {}
    previous.update(keys)
    path.write_text(json.dumps(previous, indent=2))
    print(f"merged {sorted(keys)} into {path}")


if __name__ == "__main__":
    main()
