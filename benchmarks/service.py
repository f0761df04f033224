"""Load test of ``dmlkit serve`` on loopback, and ONNX vs torch embedding speed.

Builds a 100k-item gallery (random unit vectors, d=64, faiss's exact flat index by
default, ``--factory exact`` for dmlkit's ExactIndex), trains a tiny
digits run for the model, starts the real server (uvicorn subprocess on 127.0.0.1), then
for 1, 8 and 32 concurrent clients sends ``POST /search`` (one query embedding, k=10)
for ``--seconds`` seconds each and reports throughput, p50/p99 latency and errors. The
load stops by itself; nothing but the loopback address is contacted.

    python benchmarks/service.py --items 100000 --seconds 10
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results" / "service.json"
KEY = "benchmark-key-" + "x" * 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load(url: str, clients: int, seconds: float, dim: int) -> dict:
    import httpx

    lat: list[float] = []
    errors = [0]
    lock = threading.Lock()
    end = time.perf_counter() + seconds

    def client(seed: int) -> None:
        rng = np.random.default_rng(seed)
        with httpx.Client(timeout=30, headers={"X-API-Key": KEY}) as c:
            while time.perf_counter() < end:
                q = rng.normal(size=(1, dim)).tolist()
                t = time.perf_counter()
                try:
                    ok = c.post(f"{url}/search", json={"embeddings": q, "k": 10}).status_code
                except httpx.HTTPError:
                    ok = 0
                dt = time.perf_counter() - t
                with lock:
                    if ok == 200:
                        lat.append(dt)
                    else:
                        errors[0] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    arr = np.array(lat) * 1000
    return {"clients": clients, "requests": len(lat), "errors": errors[0],
            "throughput_rps": len(lat) / wall, "p50_ms": float(np.percentile(arr, 50)),
            "p99_ms": float(np.percentile(arr, 99))}


def embed_speed(run_dir: Path, onnx: Path, rows: int = 4096, repeats: int = 5) -> dict:
    import onnxruntime as ort
    import torch

    from dmlkit.runs import load_run
    from dmlkit.runs.export import FlatInputEmbedder, run_input_shape

    run = load_run(run_dir)
    shape = run_input_shape(run)
    model = FlatInputEmbedder(run.model.eval(), shape).eval()
    x = np.random.default_rng(0).random((rows, int(np.prod(shape)))).astype(np.float32)
    session = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    times = {"torch": [], "onnxruntime": []}
    for _ in range(repeats):  # interleaved
        t = time.perf_counter()
        with torch.no_grad():
            model(torch.from_numpy(x))
        times["torch"].append(time.perf_counter() - t)
        t = time.perf_counter()
        session.run(None, {"inputs": x})
        times["onnxruntime"].append(time.perf_counter() - t)
    med = {k: float(np.median(v)) for k, v in times.items()}
    return {"rows": rows, "torch_ms": med["torch"] * 1000, "onnx_ms": med["onnxruntime"] * 1000,
            "onnx_speedup": med["torch"] / med["onnxruntime"]}


def main() -> None:
    import httpx

    from dmlkit.config import Config
    from dmlkit.index import ExactIndex, FaissIndex
    from dmlkit.runs.export import export_run
    from dmlkit.training import train_run

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, nargs="*", default=[1, 8, 32])
    parser.add_argument("--factory", default="Flat",
                        help="faiss factory of the gallery index ('exact': dmlkit's ExactIndex)")
    parser.add_argument("--out", default=RESULTS.name,
                        help="file in benchmarks/results (an absolute path is used as is)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="dmlkit-service-bench-"))
    try:
        cfg = Config.from_dict({"data": {"name": "digits"}, "model": {"name": "mlp",
                                "dim": args.dim, "hidden": [256]},
                                "training": {"epochs": 1, "progress": False}})
        train_run(cfg, root / "run", log=lambda *a: None)
        export_run(root / "run", root / "m.onnx")
        rng = np.random.default_rng(0)
        gallery = rng.normal(size=(args.items, args.dim)).astype(np.float32)
        gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
        index = (ExactIndex(args.dim) if args.factory == "exact"
                 else FaissIndex(args.dim, factory=args.factory))
        index.add(gallery, payloads=[{"i": i} for i in range(args.items)])
        index.save(root / "idx")
        (root / "keys").write_text(KEY + "\n")
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "dmlkit", "serve", "--run", str(root / "run"), "--index",
             str(root / "idx"), "--port", str(port), "--api-keys-file", str(root / "keys"),
             "--rate", "100000", "--burst", "100000"], stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        for _ in range(600):
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        rows = []
        try:
            for n in args.clients:
                row = load(url, n, args.seconds, args.dim)
                rows.append(row)
                print(f"{n:3d} clients: {row['throughput_rps']:8.1f} req/s  p50 "
                      f"{row['p50_ms']:7.2f} ms  p99 {row['p99_ms']:7.2f} ms  errors "
                      f"{row['errors']}", flush=True)
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(60)
        speed = embed_speed(root / "run", root / "m.onnx")
        print(f"embed {speed['rows']} rows: torch {speed['torch_ms']:.1f} ms, onnxruntime "
              f"{speed['onnx_ms']:.1f} ms ({speed['onnx_speedup']:.2f}x)")
        out = RESULTS.parent / args.out
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"args": vars(args), "search": rows, "embed": speed},
                                  indent=2))
        print(f"wrote {out}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    from _common import run_main

    run_main(main)
