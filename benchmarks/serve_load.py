"""Load test on loopback: this server vs the raw engine, a naive FastAPI + torch endpoint, and LitServe.

    python benchmarks/serve_load.py [--model DIR | --arch resnet50 --crop 224] [--concurrency 1 4 8 16] [--seconds 8]

Every server runs in its own process on 127.0.0.1 and gets JPEG uploads (one image per request) from
a bounded asyncio load generator; it reports images/s and p50/p99 latency per concurrency. In the same
run: the raw engine (in-process ONNX Runtime on the same graph, already-preprocessed tensors, at the
server's max batch size), a naive FastAPI endpoint with one torch forward per request (written here),
and LitServe serving the same ONNX graph with its dynamic batching (``pip install -e ".[bench]"``).
Without --model, a ResNet-50 with random weights is built for timing only (speed does not depend on weights).

Each server starts in a session of its own and is stopped as a whole process group (LitServe's workers
included) when its turn ends, when the benchmark fails, and on Ctrl-C or SIGTERM (``tests/support/processes.py``).
"""

import argparse
import asyncio
import io
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support import processes  # noqa: E402

MAX_BATCH, WAIT_MS = 8, 10


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def jpegs(count: int = 16, phone: bool = False) -> list[bytes]:
    """~500 px JPEGs, or (``phone``) 12-megapixel 4032x3024 JPEGs drawn from the same photos."""
    import skimage
    from PIL import Image

    root = Path(skimage.__file__).parent / "data"
    out = []
    for name in ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png", "retina.jpg"):
        img = Image.open(root / name).convert("RGB")
        if phone:
            img = img.resize((4032, 3024), Image.Resampling.BICUBIC)
        else:
            img.thumbnail((500, 500))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return (out * (count // len(out) + 1))[:count]


# ----------------------------------------------------------------------------------------------------------------
# Peers, each started as `python benchmarks/serve_load.py --serve KIND --model DIR --port N`

def serve_naive(model: str, port: int) -> None:
    """One request, one decode, one torch forward: what people write by hand."""
    import torch
    import uvicorn
    from fastapi import FastAPI, UploadFile

    from hub import BYOLModel
    from hub.preprocess import decode_image

    torch.set_num_threads(max(1, torch.get_num_threads()))
    net = BYOLModel.from_pretrained(model)
    app = FastAPI()

    @app.post("/embed")
    async def embed(images: UploadFile) -> dict:
        img = decode_image(await images.read())
        with torch.inference_mode():
            vec = net(net.preprocess([img]))[0]
        return {"embedding": vec.tolist()}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


try:
    import litserve as ls
except ImportError:
    ls = None

if ls is not None:

    class OnnxLitAPI(ls.LitAPI):
        """The same ONNX graph and preprocessing as the server, with LitServe's batching (module level, so
        LitServe's worker processes can unpickle it)."""

        def __init__(self, model: str, **kwargs):
            super().__init__(**kwargs)
            self.model = model

        def setup(self, device):
            import onnxruntime as ort

            from hub.config import ModelConfig

            self.cfg = ModelConfig.load(self.model)
            self.session = ort.InferenceSession(str(Path(self.model) / "model.onnx"),
                                                providers=["CPUExecutionProvider"])

        def decode_request(self, request):
            from hub.preprocess import decode_image, preprocess_one

            return preprocess_one(decode_image(request["images"].file.read()), self.cfg.preprocessing)

        def batch(self, inputs):
            return np.stack(inputs)

        def predict(self, x):
            return self.session.run(["avgpool"], {"pixel_values": x})[0]

        def unbatch(self, output):
            return list(output)

        def encode_response(self, output):
            return {"embedding": output.tolist()}


def serve_litserve(model: str, port: int) -> None:
    api = OnnxLitAPI(model, max_batch_size=MAX_BATCH, batch_timeout=WAIT_MS / 1000, api_path="/embed")
    ls.LitServer(api, accelerator="cpu", workers_per_device=1).run(port=port, generate_client_file=False)


def start(kind: str, model: str, logs: Path) -> tuple[subprocess.Popen, str]:
    """Start a server in its own session (``processes.stop`` ends it with every worker it forks)."""
    port = free_port()
    if kind.startswith("ours"):
        cmd = [sys.executable, "-m", "service.server.cli", "--model", model, "--port", str(port), "--max-batch-size",
               str(MAX_BATCH), "--max-wait-ms", str(WAIT_MS), "--log-level", "warning",
               "--max-body-bytes", str(64 * 2**20)] + (["--fast-jpeg-decode"] if kind == "ours-fast" else []) + \
            (["--inference-streams", "1"] if kind == "ours-1stream" else [])
    elif kind == "ray-serve":  # the same app as one Ray Serve replica on every core, behind Serve's HTTP proxy
        cmd = [sys.executable, "-m", "service.server.cli", "--engine", "ray", "--replicas", "1", "--replica-cpus",
               str(os.cpu_count() or 1), "--model", model, "--port", str(port), "--max-batch-size", str(MAX_BATCH),
               "--max-wait-ms", str(WAIT_MS), "--log-level", "warning", "--max-body-bytes", str(64 * 2**20)]
    else:
        cmd = [sys.executable, __file__, "--serve", kind, "--model", model, "--port", str(port)]
    log = logs / f"{kind}.log"
    with open(log, "wb") as out:  # a file, not a pipe: a chatty server never blocks on a full pipe
        proc = processes.start(cmd, stdout=subprocess.DEVNULL, stderr=out, cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    import httpx

    try:
        deadline = time.time() + 180
        probe = "/ready" if kind.startswith(("ours", "ray")) else "/docs" if kind == "naive" else "/health"
        while time.time() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{kind} server exited: {log.read_text(errors='replace')[-2000:]}")
            try:
                if httpx.get(url + probe, timeout=1).status_code == 200:
                    return proc, url
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"{kind} server did not start in 180 s")
    except BaseException:
        processes.stop(proc)
        raise


async def load(url: str, images: list[bytes], concurrency: int, seconds: float) -> tuple[float, float, float]:
    import httpx

    latencies: list[float] = []
    stop = time.perf_counter() + seconds
    errors = 0

    async def worker(i: int, client: httpx.AsyncClient, requests: int | None = None) -> None:
        nonlocal errors
        n = i
        while time.perf_counter() < stop and (requests is None or n < i + requests * concurrency):
            start = time.perf_counter()
            r = await client.post(url + "/embed", files={"images": ("x.jpg", images[n % len(images)], "image/jpeg")})
            if r.status_code != 200:
                errors += 1
                if errors == 1:
                    print(f"    first error: {r.status_code} {r.text[:200]}")
            else:
                latencies.append(time.perf_counter() - start)
            n += concurrency

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        await asyncio.gather(*(worker(i, client, requests=2) for i in range(concurrency)))  # warm-up
        latencies.clear()
        begin = time.perf_counter()
        stop = begin + seconds
        await asyncio.gather(*(worker(i, client) for i in range(concurrency)))
        elapsed = time.perf_counter() - begin
    if errors:
        print(f"    ({errors} errors)")
    lat = sorted(latencies)
    return len(lat) / elapsed, lat[len(lat) // 2] * 1000, lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000


def raw_engine(model: str, images: list[bytes], seconds: float, streams: int = 1) -> float:
    """ONNX Runtime in-process on preprocessed batches of MAX_BATCH: one session with all cores (``streams=1``,
    what people write), or ``streams`` concurrent runs of MAX_BATCH / streams images on cores / streams threads
    each (ONNX Runtime's best configuration on a CPU, the one this server uses by default)."""
    import threading

    import onnxruntime as ort

    from hub.config import ModelConfig
    from hub.preprocess import decode_image, preprocess

    cfg = ModelConfig.load(model)
    x = preprocess([decode_image(b) for b in images[:MAX_BATCH]], cfg.preprocessing)[:MAX_BATCH // streams]
    options = ort.SessionOptions()
    if streams > 1:
        options.intra_op_num_threads = max(1, (os.cpu_count() or 1) // streams)
    session = ort.InferenceSession(str(Path(model) / "model.onnx"), options, providers=["CPUExecutionProvider"])
    session.run(None, {"pixel_values": x})
    done = [0] * streams
    stop = time.perf_counter() + seconds

    def work(i: int) -> None:
        while time.perf_counter() < stop:
            session.run(None, {"pixel_values": x})
            done[i] += len(x)

    start = time.perf_counter()
    threads = [threading.Thread(target=work, args=(i,)) for i in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done) / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model folder with model.onnx (default: a random-init model "
                        "of --arch at --crop, built for timing only)")
    parser.add_argument("--arch", default="resnet50", help="architecture of the random model (default resnet50)")
    parser.add_argument("--crop", type=int, default=224, help="input size of the random model (default 224; its "
                        "resize is crop x 8/7)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8, 16], help="clients (default 1 4 8 16)")
    parser.add_argument("--seconds", type=float, default=8, help="seconds per measurement (default 8)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of raw engine + every server; ratios are the "
                        "median of the rounds' ratios (a shared machine drifts over minutes; default 3)")
    parser.add_argument("--peers", nargs="*", default=["naive", "litserve"],
                        choices=["naive", "litserve", "ours-fast", "ours-1stream", "ray-serve"],
                        help="what else to load (default naive litserve); ours-fast is this server with "
                        "--fast-jpeg-decode, ours-1stream with --inference-streams 1 (one batch at a time), "
                        "ray-serve the same app as one Ray Serve replica (byol-serve --engine ray) behind Serve's "
                        "proxy, on a local Ray started by it")
    parser.add_argument("--phone", action="store_true",
                        help="upload 12-megapixel phone photos (4032x3024 JPEGs) instead of ~500 px ones")
    parser.add_argument("--serve", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        {"naive": serve_naive, "litserve": serve_litserve}[args.serve](args.model, args.port)
        return 0
    # Ctrl-C is remembered as well as raised: one that lands inside asyncio.run (which would turn it into a
    # cancellation the load loop may finish through) or during a server's stop still ends the run as interrupted
    interrupted = threading.Event()

    def on_sigint(signum, frame):
        interrupted.set()
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        with processes.interruptible(), tempfile.TemporaryDirectory() as tmp:
            measure(args, Path(tmp))
    except KeyboardInterrupt:
        interrupted.set()
    finally:
        signal.signal(signal.SIGINT, previous)
    if interrupted.is_set():
        print("interrupted: every server this benchmark started has been stopped", flush=True)
        return 130
    return 0


def measure(args: argparse.Namespace, tmp: Path) -> None:
    model = args.model
    if model is None:
        from hub import BYOLModel, ModelConfig, PreprocessConfig

        model = str(tmp / "model")
        pre = PreprocessConfig(resize_size=round(args.crop * 8 / 7), crop_size=args.crop)
        BYOLModel(ModelConfig(architecture=args.arch, preprocessing=pre, name=f"random-{args.arch}-for-timing")
                  ).save_pretrained(model, onnx=True, transformers=False)
    images = jpegs(phone=args.phone)
    from hub.hardware import cpu_summary

    print(f"CPU: {cpu_summary()}")
    print(f"{'12-megapixel phone' if args.phone else '~500 px'} JPEG uploads; {args.rounds} round(s), each measuring "
          "the raw engine and then every server, so that each ratio compares figures taken minutes apart at most",
          flush=True)
    import contextlib
    import statistics

    servers: dict[str, str] = {}
    with contextlib.ExitStack() as stack:
        for kind in ["ours", *args.peers]:
            try:
                proc, url = start(kind, model, tmp)
            except (RuntimeError, ImportError) as err:
                print(f"{kind}: skipped ({str(err)[-300:]})")
                continue
            stack.callback(processes.stop, proc)
            servers[kind] = url
        ratios: dict[tuple[str, int], list[float]] = {}
        ratios2: dict[tuple[str, int], list[float]] = {}
        for round_ in range(args.rounds):
            raw = raw_engine(model, images, args.seconds)
            raw2 = raw_engine(model, images, args.seconds, streams=2)
            tag = f"round {round_ + 1}: " if args.rounds > 1 else ""
            print(f"{tag}raw engine (ONNX Runtime in-process, batch {MAX_BATCH}, preprocessed): {raw:.1f} img/s; "
                  f"2 streams (batches of {MAX_BATCH // 2} at once, cores / 2 threads each): {raw2:.1f} img/s",
                  flush=True)
            for kind, url in servers.items():
                for c in args.concurrency:
                    ips, p50, p99 = asyncio.run(load(url, images, c, args.seconds))
                    ratios.setdefault((kind, c), []).append(ips / raw)
                    ratios2.setdefault((kind, c), []).append(ips / raw2)
                    print(f"{kind:<12} c={c:<3} {ips:7.1f} img/s  p50 {p50:7.1f} ms  p99 {p99:7.1f} ms  "
                          f"= {ips / raw:.2f}x raw", flush=True)
    best: dict[str, tuple[float, float, int]] = {}
    for (kind, c), values in ratios.items():
        med = statistics.median(values)
        if med > best.get(kind, (0.0, 0.0, 0))[0]:
            best[kind] = (med, statistics.median(ratios2[(kind, c)]), c)
    what = f"median of {args.rounds} rounds" if args.rounds > 1 else "one round"
    for kind, (ratio, ratio2, c) in best.items():
        print(f"best {kind:<12} {ratio:.2f}x raw engine, {ratio2:.2f}x raw 2 streams (c={c}, {what})"
              + (f", {best['ours'][0] / ratio:.2f}x ours/{kind}" if kind != "ours" and "ours" in best else ""))
    if ("ray-serve", args.concurrency[0]) in ratios and "ours" in servers:
        # the proxy's overhead: per concurrency, the median over rounds of (Ray Serve replica / plain byol-serve)
        for c in args.concurrency:
            per_round = [r / o for r, o in zip(ratios[("ray-serve", c)], ratios[("ours", c)])]
            print(f"ray-serve / ours at c={c}: {statistics.median(per_round):.2f}x ({what})")

if __name__ == "__main__":
    sys.exit(main())
