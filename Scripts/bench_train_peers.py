#!/usr/bin/env python3
"""Side-by-side CPU benchmark of ONE TRAINING STEP: our `cvt bench --mode train` (fp32, bf16) vs
transformers eager (fp32, bf16 autocast), same random-init weights, same shapes, same thread count.

A step is forward with int64 labels, cross-entropy loss, backward, gradient clipping to norm 1.0,
AdamW (what transformers' Trainer builds by default: lr 5e-5, betas (0.9, 0.999), eps 1e-8,
fused, its two parameter groups, weight decay 0.0) and zero_grad, in train mode (dropout and
drop-path at the config's defaults). Every system runs in its own process, so that its peak RSS is
its own.

Usage (after Scripts/setup-reference-env.sh and `swift build -c release`):
  .venv-reference/bin/python Scripts/bench_train_peers.py --preset cvt-13 --batch-size 8 --threads 2
Every system is timed --rounds times, in turn; prints one table (median of the round medians in ms
per step, images/s, ratio to ours fp32, peak RSS, each round's median) and, with --json, one JSON
object.
"""
import argparse, json, os, platform, resource, statistics, subprocess, sys, tempfile, time

import torch
from transformers import CvtConfig, CvtForImageClassification
import transformers

PRESETS = {
    "cvt-13": dict(embed_dim=[64, 192, 384], num_heads=[1, 3, 6], depth=[1, 2, 10]),
    "cvt-21": dict(embed_dim=[64, 192, 384], num_heads=[1, 3, 6], depth=[1, 4, 16]),
    "cvt-w24": dict(embed_dim=[192, 768, 1024], num_heads=[3, 12, 16], depth=[2, 2, 20]),
}
NUM_LABELS = 1000
CPU_FLAGS = ["avx2", "avx512f", "avx512_bf16", "amx_bf16"]


def timeit(fn, iterations, warmup=2):
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(iterations):
        t = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t) * 1e3)
    return statistics.median(ts), min(ts)


def worker(a):
    """One PyTorch system in this process: load the saved folder, time the training step, print JSON."""
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = CvtForImageClassification.from_pretrained(a.worker_model, dtype=torch.float32)
    model.train()
    # Trainer's two parameter groups (names from Trainer.get_decay_parameter_names, computed by the
    # parent so that this process does not import Trainer), both with its default weight decay 0.0.
    with open(a.worker_decay) as f:
        decay = set(json.load(f))
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [{"params": [p for n, p in named if n in decay], "weight_decay": 0.0},
              {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=5e-5, betas=(0.9, 0.999), eps=1e-8, fused=True)
    x = torch.randn(a.batch_size, 3, a.image_size, a.image_size)
    y = torch.randint(0, NUM_LABELS, (a.batch_size,), dtype=torch.int64)
    bf16 = a.worker == "bf16"
    losses = []

    def step():
        # Forward and loss under autocast, backward outside it, as PyTorch recommends; fp32 master weights.
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(pixel_values=x, labels=y).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())

    median, mn = timeit(step, a.iterations)
    print(json.dumps({"median_ms": median, "min_ms": mn, "images_per_second": a.batch_size / (median / 1e3),
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "losses": losses, "parameters": sum(p.numel() for _, p in named)}))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="cvt-13", choices=sorted(PRESETS))
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iterations", type=int, default=5, help="timed steps per round, after 2 warm-up steps")
    ap.add_argument("--rounds", type=int, default=3, help="times every system is timed, in turn")
    ap.add_argument("--cvt", default=os.path.join(os.path.dirname(__file__), "..", ".build", "release", "cvt"))
    ap.add_argument("--skip-ours", action="store_true", help="run only the PyTorch side")
    ap.add_argument("--skip-bf16", action="store_true", help="leave out both bf16 systems")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--worker", choices=["fp32", "bf16"], help=argparse.SUPPRESS)
    ap.add_argument("--worker-model", help=argparse.SUPPRESS)
    ap.add_argument("--worker-decay", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        return worker(a)

    torch.manual_seed(0)
    model = CvtForImageClassification(CvtConfig(num_labels=NUM_LABELS, **PRESETS[a.preset]))
    from transformers import Trainer
    decay = Trainer.get_decay_parameter_names(None, model)  # uses no Trainer state

    def run_json(cmd):
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            sys.stderr.write(out.stderr)
            raise SystemExit(f"{' '.join(cmd)} failed with exit code {out.returncode}")
        return json.loads(out.stdout.strip().splitlines()[-1])

    with tempfile.TemporaryDirectory() as root:
        d = os.path.join(root, "model")
        model.save_pretrained(d)
        del model
        decay_path = os.path.join(root, "decay_parameters.json")
        with open(decay_path, "w") as f:
            json.dump(decay, f)
        shape = ["--batch-size", str(a.batch_size), "--image-size", str(a.image_size),
                 "--threads", str(a.threads), "--iterations", str(a.iterations)]

        def ours_system(dtype):
            return lambda: run_json([a.cvt, "bench", "--mode", "train", "--model", d, *shape, "--dtype", dtype, "--json"])

        def eager_system(kind):
            return lambda: run_json([sys.executable, os.path.abspath(__file__), "--worker", kind,
                                     "--worker-model", d, "--worker-decay", decay_path, *shape])

        systems = []
        if not a.skip_ours:
            systems.append(("swift-cvt fp32", "ours_fp32", ours_system("float32")))
            if not a.skip_bf16:
                systems.append(("swift-cvt bf16", "ours_bf16", ours_system("bfloat16")))
        systems.append(("transformers eager fp32", "transformers_fp32", eager_system("fp32")))
        if not a.skip_bf16:
            systems.append(("transformers eager bf16 autocast", "transformers_bf16", eager_system("bf16")))
        # Rounds: every system once per round, in turn, so that the machine's drift (a shared VM)
        # spreads over all of them instead of landing on one; each system's figure is the median of
        # its round medians, its peak RSS the largest of its rounds'.
        per_round = {key: [] for _, key, _ in systems}
        for _ in range(a.rounds):
            for _, key, run in systems:
                time.sleep(0.5)  # every system starts on a quiet machine (the last one's threads idle)
                per_round[key].append(run())

    runs = {key: {"name": name, "median_ms": statistics.median(r["median_ms"] for r in per_round[key]),
                  "min_ms": min(r["min_ms"] for r in per_round[key]),
                  "peak_rss_mb": max(r["peak_rss_mb"] for r in per_round[key]),
                  "round_medians_ms": [r["median_ms"] for r in per_round[key]], "last": per_round[key][-1]}
            for name, key, _ in systems}
    ref = runs.get("ours_fp32")

    def ratio(num, den, field):
        return runs[num][field] / runs[den][field] if num in runs and den in runs else None

    cpuinfo = open("/proc/cpuinfo").read().splitlines()
    cpu = next((l.split(":", 1)[1].strip() for l in cpuinfo if l.startswith("model name")), platform.processor())
    flags = set(next((l.split(":", 1)[1].split() for l in cpuinfo if l.startswith("flags")), []))
    result = {
        "mode": "train", "preset": a.preset, "batch_size": a.batch_size, "image_size": a.image_size, "threads": a.threads,
        "iterations": a.iterations, "rounds": a.rounds, "cpu": cpu, "cpu_flags": {f: f in flags for f in CPU_FLAGS},
        "torch": torch.__version__, "transformers": transformers.__version__,
        "optimizer": "torch.optim.AdamW(lr=5e-5, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, fused=True), clip_grad_norm 1.0",
        "rows": [{"system": r["name"], "median_ms": r["median_ms"], "min_ms": r["min_ms"],
                  "round_medians_ms": r["round_medians_ms"], "images_per_second": a.batch_size / (r["median_ms"] / 1e3),
                  "ratio_to_ours": r["median_ms"] / ref["median_ms"] if ref else None, "peak_rss_mb": r["peak_rss_mb"]}
                 for r in runs.values()],
        "ratios": {"time_ours_fp32_over_transformers_fp32": ratio("ours_fp32", "transformers_fp32", "median_ms"),
                   "time_ours_bf16_over_transformers_bf16": ratio("ours_bf16", "transformers_bf16", "median_ms"),
                   "peak_rss_ours_fp32_over_transformers_fp32": ratio("ours_fp32", "transformers_fp32", "peak_rss_mb"),
                   "peak_rss_ours_bf16_over_transformers_bf16": ratio("ours_bf16", "transformers_bf16", "peak_rss_mb")},
        "transformers_losses": {key: runs[key]["last"]["losses"] for key in ("transformers_fp32", "transformers_bf16") if key in runs},
    }
    # Everything our binary reported (last round), extra keys such as profile, matmul_kernels and
    # thread_team included.
    for key in ("ours_fp32", "ours_bf16"):
        if key in runs:
            result[key] = runs[key]["last"]
    if a.json:
        print(json.dumps(result, indent=2))
        return
    flag_text = " ".join(f"{f}={'yes' if v else 'no'}" for f, v in result["cpu_flags"].items())
    print(f"train step: {a.preset}, batch {a.batch_size}, {a.image_size}x{a.image_size}, {a.threads} threads, "
          f"{a.rounds} rounds of {a.iterations} iterations, {cpu} ({flag_text}), torch {torch.__version__}, "
          f"transformers {transformers.__version__}")
    print(f"{'system':34} {'median ms/step':>15} {'min ms':>8} {'images/s':>9} {'time vs ours fp32':>18} {'peak RSS MB':>12}  round medians")
    for r in result["rows"]:
        rounds = " ".join(f"{m:.1f}" for m in r["round_medians_ms"])
        vs = f"{r['ratio_to_ours']:17.2f}x" if r["ratio_to_ours"] is not None else f"{'-':>18}"
        print(f"{r['system']:34} {r['median_ms']:15.1f} {r['min_ms']:8.1f} {r['images_per_second']:9.2f} {vs} "
              f"{r['peak_rss_mb']:12.0f}  {rounds}")
    rt = result["ratios"]
    for label, t, m in [("ours fp32 / transformers eager fp32", rt["time_ours_fp32_over_transformers_fp32"],
                         rt["peak_rss_ours_fp32_over_transformers_fp32"]),
                        ("ours bf16 / transformers eager bf16 autocast", rt["time_ours_bf16_over_transformers_bf16"],
                         rt["peak_rss_ours_bf16_over_transformers_bf16"])]:
        if t is not None:
            print(f"{label}: time {t:.2f}x, peak RSS {m:.2f}x")
    for key, name in [("ours_fp32", "fp32"), ("ours_bf16", "bf16")]:
        if key in result:
            extra = {k: v for k, v in result[key].items() if k in ("matmul_kernels", "thread_team")}
            if extra:
                print(f"swift-cvt {name}: " + ", ".join(f"{k} {v}" for k, v in extra.items()))


if __name__ == "__main__":
    sys.exit(main())
