#!/usr/bin/env python3
"""Side-by-side CPU benchmark: our `cvt bench` vs transformers eager (fp32, bf16) and ONNX Runtime,
same random-init weights, same shapes, same thread count, one run.

Usage (after Scripts/setup-reference-env.sh and `swift build -c release`):
  .venv-reference/bin/python Scripts/bench_peers.py --preset cvt-13 --batch-size 1 --threads 2
Every system is timed --rounds times, in turn; prints one table (median of the round medians in ms
per batch, images/s, ratio to ours, each round's median) and, with --json, one JSON object.
"""
import argparse, copy, json, os, platform, statistics, subprocess, sys, tempfile, time

import torch
from transformers import CvtConfig, CvtForImageClassification

PRESETS = {
    "cvt-13": dict(embed_dim=[64, 192, 384], num_heads=[1, 3, 6], depth=[1, 2, 10]),
    "cvt-21": dict(embed_dim=[64, 192, 384], num_heads=[1, 3, 6], depth=[1, 4, 16]),
    "cvt-w24": dict(embed_dim=[192, 768, 1024], num_heads=[3, 12, 16], depth=[2, 2, 20]),
}


def timeit(fn, iterations, warmup=2):
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(iterations):
        t = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t) * 1e3)
    return statistics.median(ts), min(ts)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="cvt-13", choices=sorted(PRESETS))
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3, help="times every system is timed, in turn")
    ap.add_argument("--spin", action="store_true", help="run ours with OMP_WAIT_POLICY=active (spinning OpenMP threads; only AVX-512 CPUs run OpenMP's team, see docs/performance.md, Threads)")
    ap.add_argument("--cvt", default=os.path.join(os.path.dirname(__file__), "..", ".build", "release", "cvt"))
    ap.add_argument("--skip-onnx", action="store_true")
    ap.add_argument("--skip-eager", action="store_true", help="leave out transformers eager (its bf16 takes ~30 s per batch of 32)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()

    torch.manual_seed(0)
    torch.set_num_threads(a.threads)
    model = CvtForImageClassification(CvtConfig(num_labels=1000, **PRESETS[a.preset])).eval()
    x = torch.randn(a.batch_size, 3, a.image_size, a.image_size)

    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        # Ours on the very same weights. `--spin` lets only our process's OpenMP threads spin
        # between calls, as ORT's and PyTorch's pools do (setting it for this whole script would
        # make PyTorch's threads here spin through every other system's turn).
        ours_env = dict(os.environ)
        if a.spin:
            ours_env["OMP_WAIT_POLICY"] = "active"
        def cvt_bench(dtype):
            out = subprocess.run([a.cvt, "bench", "--model", d, "--batch-size", str(a.batch_size), "--image-size", str(a.image_size),
                                  "--threads", str(a.threads), "--iterations", str(a.iterations), "--dtype", dtype, "--json"],
                                 check=True, capture_output=True, text=True, env=ours_env)
            return json.loads(out.stdout)
        ours = {}
        def ours_system(dtype):
            def run():
                r = cvt_bench(dtype)
                ours[dtype] = r
                return r["median_ms"], r["min_ms"]
            return run
        systems = [("swift-cvt fp32", ours_system("float32")),
                   ("swift-cvt bf16", ours_system("bfloat16")),
                   ("swift-cvt fp16-stored weights", ours_system("float16"))]
        model_bf16 = copy.deepcopy(model).to(torch.bfloat16)
        xb = x.to(torch.bfloat16)
        def eager(m, inp):
            def run():
                with torch.no_grad():
                    return timeit(lambda: m(inp), a.iterations)
            return run
        if not a.skip_eager:
            systems += [("transformers eager fp32", eager(model, x)), ("transformers eager bf16", eager(model_bf16, xb))]
        if not a.skip_onnx:
            import onnxruntime as ort
            path = os.path.join(d, "model.onnx")
            torch.onnx.export(model, (x,), path, input_names=["pixel_values"], output_names=["logits"],
                              opset_version=17, dynamo=False)
            so = ort.SessionOptions()
            so.intra_op_num_threads = a.threads
            so.inter_op_num_threads = 1
            sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
            feed = {"pixel_values": x.numpy()}
            systems.append((f"ONNX Runtime {ort.__version__} fp32", lambda: timeit(lambda: sess.run(None, feed), a.iterations)))
        # Rounds: every system once per round, in turn, so that the machine's drift (a shared VM)
        # spreads over all of them instead of landing on one; each system's figure is the median of
        # its round medians.
        per_round = {name: [] for name, _ in systems}
        for _ in range(a.rounds):
            for name, run in systems:
                # The previous system's thread pools (PyTorch's, ONNX Runtime's, in this process)
                # spin for a while after their last work: let them go idle so that every system
                # starts on a quiet machine.
                time.sleep(0.5)
                per_round[name].append(run())
        rows = [(name, statistics.median(m for m, _ in per_round[name]), min(mn for _, mn in per_round[name]),
                 [m for m, _ in per_round[name]]) for name, _ in systems]
        ours, ours_bf16, ours_f16 = ours["float32"], ours["bfloat16"], ours["float16"]

    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
    result = {
        "preset": a.preset, "batch_size": a.batch_size, "image_size": a.image_size, "threads": a.threads,
        "iterations": a.iterations, "cpu": cpu, "torch": torch.__version__,
        "rounds": a.rounds, "ours_omp_wait_policy": sorted({r.get("omp_wait_policy", "?") for r in (ours, ours_bf16, ours_f16)}),
        "rows": [{"system": n, "median_ms": m, "min_ms": mn, "round_medians_ms": rm, "images_per_second": a.batch_size / (m / 1e3),
                  "ratio_to_ours": m / rows[0][1]} for n, m, mn, rm in rows],
        "ours_peak_rss_mb": ours["peak_rss_mb"], "ours_bf16_peak_rss_mb": ours_bf16["peak_rss_mb"],
        "ours_f16_peak_rss_mb": ours_f16["peak_rss_mb"],
        # Which kernels ours ran: the Linear layers' (oneDNN or our AVX2 GEMM), fused attention, and
        # whether bf16 had native kernels or was emulated.
        "ours_kernels": {"linear": ours.get("linear_kernel"), "fused_attention": ours.get("fused_attention"),
                         "bf16_matmuls": ours_bf16.get("matmul_kernels"), "thread_team": ours.get("thread_team")},
        "ours_weights_mb": {"float32": ours["weights_mb"], "bfloat16": ours_bf16["weights_mb"], "float16": ours_f16["weights_mb"]},
    }
    if a.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{a.preset}, batch {a.batch_size}, {a.image_size}x{a.image_size}, {a.threads} threads, "
          f"{a.rounds} rounds of {a.iterations} iterations, {cpu}; ours' OpenMP wait: {', '.join(result['ours_omp_wait_policy'])}")
    print(f"{'system':34} {'median ms/batch':>16} {'min ms':>8} {'images/s':>9} {'time vs ours':>13}  round medians")
    for r in result["rows"]:
        rounds = " ".join(f"{m:.1f}" for m in r["round_medians_ms"])
        print(f"{r['system']:34} {r['median_ms']:16.1f} {r['min_ms']:8.1f} {r['images_per_second']:9.1f} {r['ratio_to_ours']:12.2f}x  {rounds}")
    k = result["ours_kernels"]
    print(f"swift-cvt kernels: Linear {k['linear']}, fused attention {k['fused_attention']}, bf16 matmuls {k['bf16_matmuls']}, "
          f"thread team {k['thread_team']}")
    for name, key, rss in [("fp32", "float32", ours["peak_rss_mb"]), ("bf16", "bfloat16", ours_bf16["peak_rss_mb"]),
                           ("fp16-stored", "float16", ours_f16["peak_rss_mb"])]:
        print(f"swift-cvt {name}: weights {result['ours_weights_mb'][key]:.1f} MB, peak RSS {rss:.0f} MB")


if __name__ == "__main__":
    sys.exit(main())
