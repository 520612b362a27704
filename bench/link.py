"""Benchmark: event throughput of the FPGA link on the host side, over real TCP on loopback.

The device runs in its own process (as a board would be its own hardware), the host driver
(`qnode.drivers.timetagger.TimeTagger`: frame parsing, CRC, index accounting, decoding to
EVENT_DTYPE) in this one. Rows, each the median of REPEATS connections:

- raw TCP (reference): a replay device sends EVENTS frames as fast as the socket takes them;
  the host only reads the bytes and throws them away. Words/s here is the floor the machine's
  loopback sets for this frame format.
- TimeTagger, replayed frames: the same replay device; the host driver decodes everything.
  This is the host side's ceiling, and its ratio to the raw row is the driver's cost.
- TimeTagger, `qnode sim fpga --speed X`: the simulated FPGA (the reference lab's photon source
  through the gateware's twin) at X times real time. "offered" is what the device produced per
  wall second (tags received plus tags it had to drop as OUTPUT loss records); the device
  process itself (source + twin) is what stops keeping up first: "device cores" is the CPU it
  got per wall second, "lab s / wall s" how fast its lab clock actually ran.
- UART at 3 Mbaud (theory): the ULX3S link's ceiling from the frame format
  (`qnode.gateware.link_engine.event_rate_words_per_s`, docs/link.md).

Prints a table and writes bench/results/link.json. The machine is shared; CPU seconds of the
host process are given beside wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import select
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
REPEATS = 3
MEASURE_S = 2.0  # per connection
WARM_UP_S = 0.5  # per connection, before measuring: the first frames carry what the device dropped
SPEEDS = (1, 4, 16)  # simulated FPGA: lab seconds per wall second
UART_BAUD = 3_000_000


# --- the replay device (its own process) ----------------------------------------------------


def replay_device(lab_seconds: float = 1.0) -> None:
    """Serve one host: answer its requests as the simulated FPGA does, and send one second of
    the reference lab's event words over and over, as fast as the socket takes them. Each pass
    carries on the word index, so the host sees one unbroken stream (its times repeat per pass;
    nothing on the host side orders by time)."""
    from qnode.firmware import link
    from qnode.host.config import load_config
    from qnode.sim.fpga import SimulatedFpga, _last_epoch

    device = SimulatedFpga(load_config())
    words = device.with_losses(device.produce(int(lab_seconds * 1e12)))
    header, body = words[:1], words[1:]
    chunks, epoch = [], 0
    for start in range(0, len(body), link.MAX_EVENT_WORDS):
        chunk = body[start : start + link.MAX_EVENT_WORDS]
        chunks.append((epoch, len(chunk), np.ascontiguousarray(chunk, "<u8").tobytes()))
        epoch = _last_epoch(chunk, epoch)
    server = socket.create_server(("127.0.0.1", 0))
    print(server.getsockname()[1], flush=True)
    conn, _ = server.accept()
    lock, hello = threading.Lock(), threading.Event()

    def answer_requests():
        parser = link.FrameParser()
        try:
            while data := conn.recv(65536):
                for frame in parser.feed(data):
                    reply = device.handle(frame)
                    with lock:
                        conn.sendall(reply)
                    hello.set()
        except OSError:
            pass
        hello.set()

    threading.Thread(target=answer_requests, daemon=True).start()
    hello.wait()
    index = 0

    def frame(epoch_before, n, data):
        nonlocal index
        out = link.encode_frame(link.FrameType.EVENTS, 0, struct.pack("<II", index & 0xFFFF_FFFF, epoch_before) + data)
        index += n
        return out

    try:
        with lock:
            conn.sendall(frame(0, 1, header.astype("<u8").tobytes()))
        while True:
            for i in range(0, len(chunks), 16):  # 16 frames (131 kB) a send
                batch = b"".join(frame(*c) for c in chunks[i : i + 16])
                with lock:
                    conn.sendall(batch)
    except OSError:  # the host hung up: done
        pass


class DeviceProcess:
    """A device in a child process that prints where it listens on its first line."""

    def __init__(self, argv: list[str]):
        self.process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        ready, _, _ = select.select([self.process.stdout], [], [], 120)
        line = self.process.stdout.readline() if ready else ""
        if not line:
            self.stop()
            raise RuntimeError(f"device {argv} did not start")
        self.first_line = line.strip()

    def cpu_s(self) -> float:
        """CPU seconds the device process has used (Linux /proc; NaN elsewhere)."""
        try:
            fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return float("nan")
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def replay_process() -> tuple[DeviceProcess, str]:
    dev = DeviceProcess([sys.executable, __file__, "--replay-device"])
    return dev, f"socket://127.0.0.1:{int(dev.first_line)}"


def sim_fpga_process(speed: float) -> tuple[DeviceProcess, str]:
    dev = DeviceProcess([sys.executable, "-m", "qnode.host.cli", "sim", "fpga", "--port", "0", "--speed", str(speed)])
    url = dev.first_line.split(" on ", 1)[1].split(" ", 1)[0]  # "simulated FPGA on socket://... (protocol ..."
    return dev, url


# --- the host side (this process) ------------------------------------------------------------


def raw_tcp_rate(url: str) -> dict:
    """Bytes of the device's stream read and thrown away: the loopback floor."""
    from qnode.firmware import link

    host, port = url.removeprefix("socket://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(link.encode_frame(link.FrameType.HELLO, 1, b""))
        buf = bytearray(1 << 20)
        view = memoryview(buf)
        deadline = time.perf_counter() + WARM_UP_S
        while time.perf_counter() < deadline:
            sock.recv_into(view)
        n, t0, c0 = 0, time.perf_counter(), time.process_time()
        while (now := time.perf_counter()) - t0 < MEASURE_S:
            n += sock.recv_into(view)
        wall, cpu = now - t0, time.process_time() - c0
    frame_bytes = link.FRAME_OVERHEAD + 8 + 8 * link.MAX_EVENT_WORDS
    words = n * link.MAX_EVENT_WORDS / frame_bytes
    return {"events_per_s": words / wall, "events_per_cpu_s": words / max(cpu, 1e-9), "mb_per_s": n / wall / 1e6}


def tagger_rate(url: str) -> dict:
    """Events the host driver decodes per second, and what the device reported it dropped."""
    from qnode.drivers.timetagger import TimeTagger
    from qnode.firmware.events import Kind, LossReason, split_aux

    with TimeTagger(url, timeout_s=10.0) as tagger:
        deadline = time.perf_counter() + WARM_UP_S
        while time.perf_counter() < deadline:
            tagger.read_events(0.05)
        words0, lost0 = tagger.stats.words, tagger.stats.lost_words
        n_events = n_tags = dropped = 0
        first_ps = last_ps = None
        t0, c0 = time.perf_counter(), time.process_time()
        while (now := time.perf_counter()) - t0 < MEASURE_S:
            events = tagger.read_events(0.05)
            n_events += len(events)
            tags = events["time_ps"][events["kind"] == Kind.TAG]
            n_tags += len(tags)
            if len(tags):
                first_ps = int(tags[0]) if first_ps is None else first_ps
                last_ps = int(tags[-1])
            loss = events[events["kind"] == Kind.LOSS]
            if len(loss):
                aux = split_aux(loss)
                dropped += int(aux["loss_count"][aux["loss_reason"] == LossReason.OUTPUT].sum())
        wall, cpu = now - t0, time.process_time() - c0
        words = tagger.stats.words - words0
        lost_link = tagger.stats.lost_words - lost0
        invalid = tagger.decode_stats.invalid_words
    lab_s = (last_ps - first_ps) * 1e-12 if first_ps is not None and last_ps > first_ps else 0.0
    return {"events_per_s": n_events / wall, "events_per_cpu_s": n_events / max(cpu, 1e-9),
            "words_per_s": words / wall, "tags_per_s": n_tags / wall, "output_loss_per_s": dropped / wall,
            "offered_tags_per_s": (n_tags + dropped) / wall, "lost_link_words": lost_link,
            "invalid_words": invalid, "lab_s_per_wall_s": lab_s / wall}


def median_of(runs: list[dict]) -> dict:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def main() -> None:
    from rich.console import Console
    from rich.table import Table

    from qnode.gateware.link_engine import event_rate_words_per_s

    rows = {}
    for name, measure in (("raw TCP, replayed frames (reference)", raw_tcp_rate),
                          ("TimeTagger, replayed frames", tagger_rate)):
        runs = []
        for _ in range(REPEATS):  # the replay device serves one connection: a fresh one each time
            dev, url = replay_process()
            try:
                runs.append(measure(url))
            finally:
                dev.stop()
        rows[name] = median_of(runs)
    for speed in SPEEDS:
        dev, url = sim_fpga_process(speed)
        try:
            runs = []
            for _ in range(REPEATS):
                c0, t0 = dev.cpu_s(), time.perf_counter()
                run = tagger_rate(url)
                run["device_cpu_per_wall_s"] = (dev.cpu_s() - c0) / (time.perf_counter() - t0)
                runs.append(run)
            rows[f"TimeTagger, sim fpga x{speed}"] = median_of(runs)
        finally:
            dev.stop()
    uart = {"events_per_s": event_rate_words_per_s(UART_BAUD), "events_per_s_64": event_rate_words_per_s(UART_BAUD, 64),
            "events_per_s_1": event_rate_words_per_s(UART_BAUD, 1)}

    ref = rows["raw TCP, replayed frames (reference)"]["events_per_s"]
    table = Table(title=f"FPGA link, host side over loopback TCP (median of {REPEATS} x {MEASURE_S:g} s)")
    for col in ("link", "M events/s (wall)", "M events/CPU-s", "vs raw TCP", "offered M tags/s",
                "OUTPUT loss M/s", "lab s / wall s", "device cores"):
        table.add_column(col, justify="right")
    for name, r in rows.items():
        sim_row = "sim fpga" in name
        table.add_row(name, f"{r['events_per_s'] / 1e6:.2f}", f"{r['events_per_cpu_s'] / 1e6:.2f}",
                      f"{r['events_per_s'] / ref:.2f}",
                      f"{r['offered_tags_per_s'] / 1e6:.2f}" if sim_row else "",
                      f"{r['output_loss_per_s'] / 1e6:.2f}" if sim_row else "",
                      f"{r['lab_s_per_wall_s']:.2f}" if sim_row else "",
                      f"{r['device_cpu_per_wall_s']:.2f}" if sim_row else "")
    table.add_row(f"UART {UART_BAUD:,} baud 8N1 (theory, 1024-word frames)", f"{uart['events_per_s'] / 1e6:.4f}",
                  "", f"{uart['events_per_s'] / ref:.5f}", "", "", "", "")
    Console(width=160).print(table)
    best_sim = max((r for n, r in rows.items() if "sim fpga" in n), key=lambda r: r["events_per_s"])
    out = {"benchmark": "link", "machine": platform.machine(), "python": platform.python_version(),
           "repeats": REPEATS, "measure_s": MEASURE_S, "load_average": os.getloadavg()[0],
           "rows": rows, "uart": {"baud": UART_BAUD, **uart},
           "link_host_events_per_s": rows["TimeTagger, replayed frames"]["events_per_s"],
           "link_sim_fpga_events_per_s": best_sim["events_per_s"],
           "uart_events_per_s": uart["events_per_s"]}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "link.json").write_text(json.dumps(out, indent=2))
    print(f"wrote {RESULTS / 'link.json'}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replay-device", action="store_true", help=argparse.SUPPRESS)
    if parser.parse_args().replay_device:
        replay_device()
    else:
        main()
