"""Data-parallel scaling: img/s of N ranks × 1 thread against 1 rank × 1 thread.
One job per model through Launch/mpirun-local runs `ldm-train bench MODEL
--scaling-rounds R`, which alternates blocks of steps: rank 0 alone (the other ranks
asleep), every rank on its own with no gradient exchange, and every rank
data-parallel. This machine's speed drifts by several percent over minutes, so
alternating lets the three see the same machine; each figure is the median over
rounds. The ranks running on their own give the ceiling: what N processes reach on
this machine at all (shared caches, memory, the host); and N times the slowest of them
the lockstep ceiling: ranks that wait for each other every step run at the slowest
core's speed, and this VM's cores often differ by 5-15%. Run through Launch/bench-scaling.
"""
import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--model", default="all", choices=["autoencoder", "unet", "all"])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=0, help="timed steps per block (default: 2 autoencoder, 6 unet)")
    parser.add_argument("--batch-size", type=int, default=64, help="per rank")
    args = parser.parse_args()
    models = ["autoencoder", "unet"] if args.model == "all" else [args.model]
    print(f"{args.ranks} ranks against 1, 1 thread per rank, batch {args.batch_size} per rank, "
          f"median of {args.rounds} rounds of alternating blocks")
    print(f"{'model':13}{'1-rank img/s':>14}{f'{args.ranks}-rank img/s':>14}{'scaling':>9}{'exposed all-reduce':>20}"
          f"{'ceiling':>9}{'lockstep ceiling':>18}")
    for model in models:
        steps = args.steps or (2 if model == "autoencoder" else 6)
        out = subprocess.run([os.path.join(HERE, "mpirun-local"), "-n", str(args.ranks), "ldm-train", "bench", model, "--json",
                              "--threads", "1", "--steps", str(steps), "--batch-size", str(args.batch_size),
                              "--scaling-rounds", str(args.rounds)],
                             check=True, capture_output=True, text=True, cwd=ROOT).stdout
        t = json.loads(out.strip().splitlines()[-1])
        rounds = ", ".join(f"{s:.2f}x ({c:.2f}x)" for s, c in zip(t["round_scaling"], t["round_ceiling"]))
        print(f"  {model} rounds, scaling (ceiling): {rounds}", file=sys.stderr, flush=True)
        print(f"{model:13}{t['solo_img_per_s']:14.1f}{t['parallel_img_per_s']:14.1f}{t['scaling']:8.2f}x"
              f"{100 * t['exposed_comm_ms'] / t['parallel_step_ms']:19.1f}%{t['ceiling']:8.2f}x{t['lockstep_ceiling']:17.2f}x",
              flush=True)


if __name__ == "__main__":
    main()
