"""Side-by-side op benchmark: SwiftLDM's engine against PyTorch on the same shapes.

Asks ldm-train for the reference models' op shapes (`ldm-train bench ops --list`),
then times forward + backward of every shape in SwiftLDM and in PyTorch (Debian
python3-torch: oneDNN for convs, OpenBLAS for matmuls) with the same thread count.
The two sides never run at once: each round times every shape in SwiftLDM, then
every shape in PyTorch, and rounds alternate so drift on a shared machine hits both.
A side's time for a shape is its best median over the rounds. speedup = PyTorch's
time / SwiftLDM's time, against the faster of PyTorch's NCHW (its default) and
channels_last layouts; > 1 means SwiftLDM is faster. Run it through
Launch/bench-vs-pytorch, which installs what it needs and builds ldm-train.
"""
import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BINARY = os.path.join(ROOT, ".build", "release", "ldm-train")


def swift_round(common, seconds):
    out = subprocess.run([BINARY, "bench", "ops", "--json", "--seconds", str(seconds)] + common,
                         check=True, capture_output=True, text=True, cwd=ROOT).stdout
    return {row["name"]: row["ms"] for row in map(json.loads, filter(str.strip, out.splitlines()))}


def torch_round(shapes, seconds):
    import bench_ops_torch
    times = {}
    for shape in shapes:
        nchw = bench_ops_torch.median_ms(bench_ops_torch.make_step(shape, False), seconds)
        cl = bench_ops_torch.median_ms(bench_ops_torch.make_step(shape, True), seconds) if shape["kind"] == "conv" else nchw
        times[shape["name"]] = (nchw, cl)
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--model", default="all", choices=["autoencoder", "unet", "all"])
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of both sides")
    parser.add_argument("--seconds", type=float, default=0.3, help="measuring time per shape, side and round")
    parser.add_argument("--filter", help="only shapes whose name contains this text")
    parser.add_argument("--json", action="store_true", help="one JSON object per shape")
    args = parser.parse_args()

    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "LDM_THREADS"):
        os.environ[var] = str(args.threads)
    sys.path.insert(0, HERE)
    import torch  # after the thread variables, so its pools start with that many threads
    torch.set_num_threads(args.threads)

    common = ["--threads", str(args.threads), "--model", args.model] + (["--filter", args.filter] if args.filter else [])
    listing = subprocess.run([BINARY, "bench", "ops", "--list"] + common, check=True, capture_output=True, text=True)
    shapes = [json.loads(line) for line in listing.stdout.splitlines() if line.strip()]
    if not shapes:
        raise SystemExit("bench-vs-pytorch: no shapes match")

    ours, theirs = {}, {}
    for r in range(args.rounds):
        print(f"round {r + 1}/{args.rounds} ...", file=sys.stderr, flush=True)
        for name, ms in swift_round(common, args.seconds).items():
            ours[name] = min(ms, ours.get(name, float("inf")))
        for name, (nchw, cl) in torch_round(shapes, args.seconds).items():
            best = theirs.get(name, (float("inf"), float("inf")))
            theirs[name] = (min(nchw, best[0]), min(cl, best[1]))

    if not args.json:
        print(f"forward + backward, batch {shapes[0].get('n') or '?'}, {args.threads} thread(s) each side, "
              f"best median of {args.rounds} alternating rounds; speedup = best PyTorch ms / SwiftLDM ms")
        print(f"{'model':12}{'op':47}{'swift ms':>10}{'torch ms':>10}{'torch cl':>10}{'speedup':>9}")
    worst, totals = None, {}
    for shape in shapes:
        name = shape["name"]
        nchw, cl = theirs[name]
        speedup = min(nchw, cl) / ours[name]
        t = totals.setdefault(shape["model"], [0.0, 0.0])
        t[0] += shape["count"] * ours[name]
        t[1] += shape["count"] * min(nchw, cl)
        if shape["kind"] == "conv" and (worst is None or speedup < worst[0]):
            worst = (speedup, name)
        if args.json:
            print(json.dumps({"model": shape["model"], "name": name, "kind": shape["kind"], "swift_ms": ours[name],
                              "torch_nchw_ms": nchw, "torch_channels_last_ms": cl, "speedup": speedup}))
        else:
            print(f"{shape['model']:12}{name[:46]:47}{ours[name]:10.3f}{nchw:10.3f}{cl:10.3f}{speedup:8.2f}x")
    if not args.json:
        for model, (a, b) in totals.items():
            print(f"{model}: these ops of one step (count-weighted) take {a:.1f} ms here, {b:.1f} ms in PyTorch ({b / a:.2f}x)")
        if worst:
            print(f"slowest conv relative to PyTorch: {worst[1]} at {worst[0]:.2f}x")


if __name__ == "__main__":
    main()
