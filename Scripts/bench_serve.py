#!/usr/bin/env python3
"""cvt serve next to a Python baseline (LitServe around transformers' image-classification
pipeline), on loopback, with wrk (Debian's): a cvt-13-sized model, 224x224 JPEGs sent as Hugging
Face JSON ({"inputs": base64, "parameters": {"top_k": 5}}), concurrency 1, 8 and 64, DURATION
seconds each; then a mix with 10% malformed requests (every good answer must be 200, every
malformed one 400); cold start (spawn to ready) and peak RSS (the whole process tree).

    python3 Scripts/bench_serve.py --python /path/to/venv/bin/python [--duration 60] [--threads 2]

--python names an interpreter with torch, transformers, pillow and litserve (e.g.
Scripts/setup-reference-env.sh's venv plus `pip install litserve`); it also writes the random-init
cvt-13 checkpoint (transformers' CvtConfig defaults, 1,000 labels) if --model is not given. Prints a
Markdown table. Every run is bounded (wrk -d) and targets 127.0.0.1 only.
"""
import argparse, base64, http.client, json, os, re, shutil, signal, socket, subprocess, sys, tempfile, threading, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

LITSERVE_APP = r'''
import base64, io, sys
import litserve as ls, torch
from fastapi import HTTPException
from PIL import Image
from transformers import pipeline

MODEL, THREADS, PORT, BATCH, DELAY = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])

class ImageClassification(ls.LitAPI):
    def setup(self, device):
        torch.set_num_threads(THREADS)
        self.pipe = pipeline("image-classification", model=MODEL, device="cpu")

    def decode_request(self, request):
        # Hugging Face's JSON format; a bad request is answered 400, as cvt serve does.
        try:
            image = Image.open(io.BytesIO(base64.b64decode(request["inputs"], validate=True)))
            image.load()
            return image.convert("RGB")
        except Exception as e:
            raise HTTPException(status_code=400, detail=f"invalid image: {e}")

    def predict(self, images):
        with torch.inference_mode():
            return self.pipe(images, top_k=5, batch_size=len(images))

    def encode_response(self, output):
        return output

if __name__ == "__main__":
    api = ImageClassification(max_batch_size=BATCH, batch_timeout=DELAY)
    ls.LitServer(api, accelerator="cpu", workers_per_device=1, timeout=120).run(host="127.0.0.1", port=PORT, generate_client_file=False)
'''

WRK_SCRIPT = r'''
local bodies = {}
for _, path in ipairs({__PATHS__}) do
  local f = io.open(path, "rb"); bodies[#bodies + 1] = f:read("*a"); f:close()
end
local i = 0
-- Global: done() reads each thread's counts with thread:get.
counts = {ok = 0, e400 = 0, e503 = 0, e5xx = 0, other = 0}
local threads = {}
function setup(thread) table.insert(threads, thread) end
function request()
  i = i % #bodies + 1
  return wrk.format("POST", "__PATH__", {["Content-Type"] = "application/json"}, bodies[i])
end
function response(status, headers, body)
  if status == 200 then counts.ok = counts.ok + 1
  elseif status == 400 then counts.e400 = counts.e400 + 1
  elseif status == 503 then counts.e503 = counts.e503 + 1
  elseif status >= 500 then counts.e5xx = counts.e5xx + 1
  else counts.other = counts.other + 1 end
end
function done(summary, latency, requests)
  local t = {ok = 0, e400 = 0, e503 = 0, e5xx = 0, other = 0}
  for _, thread in ipairs(threads) do
    local c = thread:get("counts")
    for k, v in pairs(c) do t[k] = t[k] + v end
  end
  io.write(string.format("STATUS ok=%d e400=%d e503=%d e5xx=%d other=%d\n", t.ok, t.e400, t.e503, t.e5xx, t.other))
  io.write(string.format("LAT p50=%.3f p90=%.3f p99=%.3f\n", latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000))
end
'''


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


def http_request(port, method, path, body=None, headers=None, timeout=120):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def tree_peak_rss_mb(pid):
    """VmHWM summed over the process and its descendants (LitServe runs its model in workers)."""
    pids, frontier = [], [pid]
    while frontier:
        p = frontier.pop()
        pids.append(p)
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    frontier += [int(c) for c in f.read().split()]
        except OSError:
            pass
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                m = re.search(r"VmHWM:\s+(\d+)", f.read())
                total += int(m.group(1)) if m else 0
        except OSError:
            pass
    return total / 1024


def wait_ready(port, path, proc, limit=300):
    start = time.monotonic()
    while time.monotonic() - start < limit:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            if http_request(port, "GET", path, timeout=2)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise SystemExit("server not ready in time")


def run_wrk(port, path, bodies, concurrency, duration, workdir):
    script = os.path.join(workdir, "post.lua")
    with open(script, "w") as f:
        f.write(WRK_SCRIPT.replace("__PATHS__", ", ".join(json.dumps(b) for b in bodies)).replace("__PATH__", path))
    threads = min(concurrency, 2)
    out = subprocess.run(["wrk", "-t", str(threads), "-c", str(concurrency), "-d", f"{duration}s", "--timeout", "30s",
                          "--latency", "-s", script, f"http://127.0.0.1:{port}{path}"],
                         capture_output=True, text=True, timeout=duration + 60).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    status = dict(kv.split("=") for kv in re.search(r"STATUS (.*)", out).group(1).split())
    lat = dict(kv.split("=") for kv in re.search(r"LAT (.*)", out).group(1).split())
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    socket_errors = sum(int(x) for x in errors.groups()) if errors else 0
    return {"rps": rps, "p50": float(lat["p50"]), "p90": float(lat["p90"]), "p99": float(lat["p99"]),
            "ok": int(status["ok"]), "e503": int(status["e503"]), "e5xx": int(status["e5xx"]),
            "other": int(status["e400"]) + int(status["other"]), "socket_errors": socket_errors}


def malformed_mix(port, path, good_bodies, total=400, workers=8):
    """10% malformed (corrupt image bytes, broken base64, broken JSON), sent concurrently; every
    good request must be answered 200 with predictions."""
    bad = [json.dumps({"inputs": base64.b64encode(b"\xff\xd8\xff" + os.urandom(2000)).decode()}).encode(),
           json.dumps({"inputs": "%%% not base64 %%%"}).encode(), b'{"inputs": ']
    plan = [(i % 10 == 0, bad[(i // 10) % 3] if i % 10 == 0 else good_bodies[i % len(good_bodies)]) for i in range(total)]
    results, lock, index = [], threading.Lock(), [0]

    def worker():
        while True:
            with lock:
                if index[0] >= len(plan):
                    return
                malformed, body = plan[index[0]]; index[0] += 1
            try:
                status, data = http_request(port, "POST", path, body, {"Content-Type": "application/json"})
                ok = (status == 400) if malformed else (status == 200 and isinstance(json.loads(data), list))
            except Exception:
                status, ok = -1, False
            with lock:
                results.append((malformed, status, ok))

    ts = [threading.Thread(target=worker) for _ in range(workers)]
    for t in ts: t.start()
    for t in ts: t.join()
    good_failed = sum(1 for m, s, ok in results if not m and not ok)
    bad_statuses = sorted({s for m, s, ok in results if m})
    return {"good": sum(1 for m, *_ in results if not m), "good_failed": good_failed,
            "malformed": sum(1 for m, *_ in results if m), "malformed_statuses": bad_statuses}


def bench_server(name, argv, env, port, ready_path, path, bodies, args, workdir):
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=open(os.path.join(workdir, f"{name}.log"), "w"),
                            start_new_session=True)
    try:
        wait_ready(port, ready_path, proc)
        # Ready means able to answer: the first classification (weights packed, pools warm) counts too.
        status, _ = http_request(port, "POST", path, open(bodies[0], "rb").read(), {"Content-Type": "application/json"})
        cold = time.monotonic() - t0
        assert status == 200, f"{name}: first request answered {status}"
        rows = {}
        for c in args.concurrency:
            rows[c] = run_wrk(port, path, bodies, c, args.duration, workdir)
            print(f"  {name} c={c}: {rows[c]}", file=sys.stderr)
        mix = malformed_mix(port, path, [open(b, "rb").read() for b in bodies])
        print(f"  {name} malformed mix: {mix}", file=sys.stderr)
        rss = tree_peak_rss_mb(proc.pid)
        return {"cold": cold, "rows": rows, "mix": mix, "rss": rss}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--python", required=True, help="interpreter with torch, transformers, pillow, litserve")
    ap.add_argument("--cvt", default=None, help="cvt binary (default: the release build)")
    ap.add_argument("--model", default=None, help="checkpoint folder (default: a random-init cvt-13 written once)")
    ap.add_argument("--duration", type=int, default=60)
    ap.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 64])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-batch-size", type=int, default=8)
    ap.add_argument("--max-batch-delay-ms", type=float, default=2)
    ap.add_argument("--only", choices=["cvt", "litserve"], default=None)
    ap.add_argument("--cvt-dtype", default="float32", help="cvt serve --dtype (float32 is transformers' numbers, as the baseline)")
    args = ap.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk not found: apt-get install -y wrk")
    cvt = args.cvt or os.path.join(subprocess.check_output(["swift", "build", "-c", "release", "--show-bin-path"], cwd=ROOT, text=True).strip(), "cvt")
    work = tempfile.mkdtemp(prefix="cvt-bench-serve-")
    model = args.model or os.path.join(tempfile.gettempdir(), "cvt-bench-serve-cvt13")
    if not os.path.exists(os.path.join(model, "model.safetensors")):
        subprocess.run([args.python, "-c", f'''
import torch
from transformers import CvtConfig, CvtForImageClassification, ConvNextImageProcessorPil
torch.manual_seed(0)
labels = {{i: f"class_{{i}}" for i in range(1000)}}
CvtForImageClassification(CvtConfig(id2label=labels, label2id={{v: k for k, v in labels.items()}})).eval().save_pretrained("{model}")
ConvNextImageProcessorPil(size={{"shortest_edge": 224}}, crop_pct=0.875, resample=3).save_pretrained("{model}")
'''], check=True)
    # 224x224 JPEGs from the test fixtures, as JSON request bodies.
    bodies = []
    for i, name in enumerate(["rocket.jpg", "coffee.png", "chelsea_422.jpg", "astronaut_rgba.png", "camera_gray.png", "chelsea_tall.jpg",
                              "rocket_portrait.jpg", "coffee_444.jpg"]):
        jpg = os.path.join(work, f"{i}.jpg")
        subprocess.run([args.python, "-c", "import sys; from PIL import Image; Image.open(sys.argv[1]).convert('RGB').resize((224, 224), Image.BICUBIC).save(sys.argv[2], quality=90)",
                        os.path.join(ROOT, "Tests/Fixtures/images", name), jpg], check=True)
        body = os.path.join(work, f"{i}.json")
        with open(body, "w") as f:
            json.dump({"inputs": base64.b64encode(open(jpg, "rb").read()).decode(), "parameters": {"top_k": 5}}, f)
        bodies.append(body)

    results = {}
    env = dict(os.environ, OMP_WAIT_POLICY="passive")
    if args.only in (None, "cvt"):
        port = free_port()
        results["cvt serve"] = bench_server("cvt", [cvt, "serve", "--model", model, "--port", str(port), "--threads", str(args.threads),
                                                    "--max-batch-size", str(args.max_batch_size), "--max-batch-delay-ms", str(args.max_batch_delay_ms),
                                                    "--dtype", args.cvt_dtype, "--log-level", "warning"], env, port, "/ready", "/", bodies, args, work)
    if args.only in (None, "litserve"):
        app = os.path.join(work, "litserve_app.py")
        with open(app, "w") as f:
            f.write(LITSERVE_APP)
        port = free_port()
        penv = dict(env, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
        results["LitServe + transformers"] = bench_server("litserve", [args.python, app, model, str(args.threads), str(port), str(args.max_batch_size),
                                                                       str(args.max_batch_delay_ms / 1000)], penv, port, "/health", "/predict", bodies, args, work)
    print(f"| server | concurrency | requests/s | p50 ms | p90 ms | p99 ms | 200 | 503 | other 5xx | other | socket errors |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        for c, row in r["rows"].items():
            print(f"| {name} | {c} | {row['rps']:.1f} | {row['p50']:.1f} | {row['p90']:.1f} | {row['p99']:.1f} | {row['ok']} | {row['e503']} | {row['e5xx']} | {row['other']} | {row['socket_errors']} |")
    print()
    print("| server | cold start to first answer (s) | peak RSS (MB) | 10% malformed mix: good requests failed / good | malformed answered |")
    print("|---|---|---|---|---|")
    for name, r in results.items():
        m = r["mix"]
        print(f"| {name} | {r['cold']:.2f} | {r['rss']:.0f} | {m['good_failed']} / {m['good']} | {m['malformed']} with status {m['malformed_statuses']} |")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
