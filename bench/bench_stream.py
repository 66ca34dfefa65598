"""Benchmark: preview streaming throughput and request latency over loopback.

    .venv/bin/python bench/bench_stream.py [--n 100000] [--seconds 3]

Prints three tables:

1. protocol only: a PUB -> SUB stream of ``preview`` messages (sign, send zero-copy,
   receive zero-copy, verify, decode), float32 and float16, as fast as the receiver goes;
2. the service end to end: a real server and worker, the test-only ``synthetic`` pipeline
   emitting a preview every step with no work in between, the Client receiving (worker ->
   server -> client: two signed hops, latest-wins on the way);
3. request round trips through the server: ``ping``, ``list_jobs``, ``get_result`` of
   ``--n`` Gaussians.
"""

from __future__ import annotations

import argparse
import io
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zmq

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from blender_addon.core import protocol as P  # noqa: E402
from blender_addon.core.client import Client  # noqa: E402
from blender_addon.core.splat_arrays import SplatArrays  # noqa: E402


def make_splats(n: int, sh_k: int = 0) -> SplatArrays:
    rng = np.random.default_rng(0)
    f = lambda *s: rng.normal(size=s).astype(np.float32)  # noqa: E731
    return SplatArrays(f(n, 3), f(n, 4), f(n, 3), f(n), f(n, 3), f(n, sh_k, 3) if sh_k else None)


def bench_protocol(n: int, seconds: float, dtype: str) -> tuple[float, float]:
    """(updates/s, MB/s) for a PUB -> SUB preview stream; the sender never waits."""
    ctx = zmq.Context()
    pub, sub = ctx.socket(zmq.PUB), ctx.socket(zmq.SUB)
    pub.setsockopt(zmq.SNDHWM, 2)
    sub.setsockopt(zmq.RCVHWM, 2)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    sub.connect(f"tcp://127.0.0.1:{port}")
    sub.setsockopt(zmq.SUBSCRIBE, b"t")
    tx, rx = P.Session(b"k" * 32, limits=P.Limits.for_client()), P.Session(b"k" * 32, limits=P.Limits.for_client())
    msg = P.Preview(job_id="j", step=0, splats=make_splats(n).astype(dtype))
    while not sub.poll(10):  # handshake: publish until the subscription is live
        tx.send(pub, P.Ping(), identities=[b"t"])
    while sub.poll(0):
        sub.recv_multipart()
    # one process, so alternate: publish one, receive one (the receiver is the bottleneck
    # anyway: verify + decode of every byte)
    count, nbytes = 0, 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        tx.send(pub, msg, identities=[b"t"])
        env = rx.recv(sub)
        count += 1
        nbytes += env.message.splats.nbytes()
    dt = time.perf_counter() - t0
    pub.close(0)
    sub.close(0)
    ctx.term()
    return count / dt, nbytes / dt / 1e6


class Server:
    def __init__(self, root: Path):
        self.conn = root / "conn.json"
        cmd = [
            sys.executable,
            "-m",
            "backend",
            "serve",
            "--connection-file",
            str(self.conn),
            "--state-dir",
            str(root / "state"),
            "--pipelines",
            "synthetic",
            "--preview-hz",
            "1000",
            "--max-frame-mb",
            "256",
            "--log-level",
            "WARNING",
        ]
        env = {**os.environ, "PORTRAITSPLAT_TEST_PIPELINES": "1", "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, start_new_session=True, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while not self.conn.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        finally:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def photo() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((128, 128, 3), 128, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def bench_service(client: Client, n: int, seconds: float, dtype: str) -> tuple[float, float, int]:
    """(updates/s, MB/s, steps the worker made) as the client receives a job's previews."""
    job = client.submit(
        photo(),
        "synthetic",
        options={"steps": 10**9, "step_seconds": 0.0, "n_gaussians": n},
        preview_hz=1000,
        preview_dtype=dtype,
    )
    count, nbytes, last_step = 0, 0, 0
    t0 = None
    while True:
        for msg in client.poll(timeout=0.5):
            if isinstance(msg, P.Preview) and msg.job_id == job:
                if t0 is None:
                    t0 = time.perf_counter()  # start at the first preview: the worker is warm
                    continue
                count += 1
                nbytes += msg.splats.nbytes()
                last_step = msg.step
        if t0 is not None and time.perf_counter() - t0 >= seconds:
            break
    dt = time.perf_counter() - t0
    client.cancel(job)
    client.wait(job, timeout=30)
    return count / dt, nbytes / dt / 1e6, last_step


def latency(fn, repeats: int) -> tuple[float, float, float]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    t = np.array(times) * 1e3
    return float(np.median(t)), float(np.percentile(t, 99)), float(t.max())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000, help="Gaussians per preview")
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    n = args.n
    mb32 = make_splats(n).nbytes() / 1e6
    print(
        f"preview of {n} Gaussians (SH degree 0): {mb32:.1f} MB float32, {mb32 / 2:.1f} MB float16; {os.cpu_count()} CPUs\n"
    )

    print("1. protocol only (PUB -> SUB on 127.0.0.1, HMAC-SHA256 signed, zero-copy)")
    for dtype in ("float32", "float16"):
        ups, mbs = bench_protocol(n, args.seconds, dtype)
        print(f"   {dtype}: {ups:7.1f} updates/s  {mbs:8.1f} MB/s")

    with tempfile.TemporaryDirectory() as tmp:
        server = Server(Path(tmp))
        try:
            with Client(server.conn) as client:
                client.connect(timeout=30)
                print("\n2. service end to end (worker -> server -> client, latest-wins)")
                for dtype in ("float32", "float16"):
                    ups, mbs, steps = bench_service(client, n, args.seconds, dtype)
                    print(f"   {dtype}: {ups:7.1f} updates/s  {mbs:8.1f} MB/s   (worker made {steps} steps)")

                print("\n3. request round trips (median / p99 / max, ms)")
                med, p99, worst = latency(client.ping, 2000)
                print(f"   ping                {med:8.3f} {p99:8.3f} {worst:8.3f}")
                med, p99, worst = latency(client.list_jobs, 200)
                print(f"   list_jobs           {med:8.3f} {p99:8.3f} {worst:8.3f}")
                job = client.submit(
                    photo(),
                    "synthetic",
                    options={"steps": 1, "step_seconds": 0.0, "n_gaussians": n, "sh_degree": 3},
                    preview_hz=0,
                )
                client.wait(job, timeout=120)
                med, p99, worst = latency(lambda: client.get_result(job), 10)
                size = (make_splats(n, 15).nbytes() * 2) / 1e6
                print(
                    f"   get_result {n // 1000}k SH3 {med:8.1f} {p99:8.1f} {worst:8.1f}   (~{size:.0f} MB: arrays + PLY)"
                )
                med, p99, worst = latency(
                    lambda: client.submit(photo(), "synthetic", options={"steps": 0}, preview_hz=0), 50
                )
                print(f"   submit_job          {med:8.3f} {p99:8.3f} {worst:8.3f}   (job folder written + fsync)")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
