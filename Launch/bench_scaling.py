"""Data-parallel scaling: img/s of N ranks × 1 thread against 1 rank × 1 thread,
both through Launch/mpirun-local (`ldm-train bench autoencoder|unet --json`). This
machine's speed drifts by several percent over minutes, so each round runs the two
back to back and the figure is the median of the per-round ratios. Each round also
runs N independent single-process benches at once, with no MPI and no gradient
exchange: their summed img/s over the 1-rank figure is what N processes can reach on
this machine at all (shared caches, memory, the host), the ceiling for the N-rank
run. Run through Launch/bench-scaling.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def bench(model, ranks, steps, batch):
    out = subprocess.run([os.path.join(HERE, "mpirun-local"), "-n", str(ranks), "ldm-train", "bench", model, "--json",
                          "--threads", "1", "--steps", str(steps), "--batch-size", str(batch)],
                         check=True, capture_output=True, text=True, cwd=ROOT).stdout
    return json.loads(out.strip().splitlines()[-1])


def independent(model, count, steps, batch):
    """img/s summed over `count` single-process benches started together."""
    command = [os.path.join(ROOT, ".build", "release", "ldm-train"), "bench", model, "--json", "--threads", "1",
               "--steps", str(steps), "--batch-size", str(batch)]
    runs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
            for _ in range(count)]
    total = 0.0
    for run in runs:
        out, _ = run.communicate()
        if run.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed with exit {run.returncode}")
        total += json.loads(out.strip().splitlines()[-1])["img_per_s"]
    return total


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--model", default="all", choices=["autoencoder", "unet", "all"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=0, help="timed steps per run (default: 3 autoencoder, 15 unet)")
    parser.add_argument("--batch-size", type=int, default=64, help="per rank")
    args = parser.parse_args()
    models = ["autoencoder", "unet"] if args.model == "all" else [args.model]
    print(f"{args.ranks} ranks against 1, 1 thread per rank, batch {args.batch_size} per rank, median of {args.rounds} back-to-back rounds")
    print(f"{'model':13}{'1-rank img/s':>14}{f'{args.ranks}-rank img/s':>14}{'scaling':>9}{'exposed all-reduce':>20}"
          f"{'ceiling':>9}")
    for model in models:
        steps = args.steps or (3 if model == "autoencoder" else 15)
        ratios, exposed, singles, multis, ceilings = [], [], [], [], []
        for r in range(args.rounds):
            one, many = bench(model, 1, steps, args.batch_size), bench(model, args.ranks, steps, args.batch_size)
            ratios.append(many["img_per_s"] / one["img_per_s"])
            exposed.append(many["exposed_comm_ms"] / many["step_ms"])
            singles.append(one["img_per_s"])
            multis.append(many["img_per_s"])
            ceilings.append(independent(model, args.ranks, steps, args.batch_size) / one["img_per_s"])
            print(f"  round {r + 1}: {one['img_per_s']:.1f} → {many['img_per_s']:.1f} img/s, {ratios[-1]:.2f}x, "
                  f"exposed {many['exposed_comm_ms']:.1f} ms ({100 * exposed[-1]:.1f}%); "
                  f"{args.ranks} independent processes {ceilings[-1]:.2f}x", file=sys.stderr, flush=True)
        median = statistics.median
        print(f"{model:13}{median(singles):14.1f}{median(multis):14.1f}{median(ratios):8.2f}x{100 * median(exposed):19.1f}%"
              f"{median(ceilings):8.2f}x", flush=True)


if __name__ == "__main__":
    main()
