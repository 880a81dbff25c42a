"""Data-parallel scaling: img/s of N ranks × 1 thread against 1 rank × 1 thread.
One job per model through Launch/mpirun-local runs `ldm-train bench MODEL
--scaling-rounds R`, which alternates blocks of steps: rank 0 alone (the other ranks
asleep), every rank on its own with no gradient exchange, and every rank
data-parallel. This machine's speed drifts by several percent over minutes, so
alternating lets the three see the same machine; each figure is the median over
rounds. The ranks running on their own give the ceiling: what N processes reach on
this machine at all (shared caches, memory, the host); and N times the slowest of them
the lockstep ceiling: ranks that wait for each other every step run at the slowest
core's speed, and this VM's cores often differ by 5-15%. With --pytorch, the same
rounds run next through PyTorch's DistributedDataParallel over gloo
(Launch/bench_scaling_torch.py) on the same reference model, batch and ranks.
Run through Launch/bench-scaling.
"""
import argparse
import json
import os
import socket
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
    parser.add_argument("--pytorch", action="store_true", help="also run PyTorch DDP (gloo) the same way")
    args = parser.parse_args()
    models = ["autoencoder", "unet"] if args.model == "all" else [args.model]
    print(f"{args.ranks} ranks against 1, 1 thread per rank, batch {args.batch_size} per rank, "
          f"median of {args.rounds} rounds of alternating blocks")
    print(f"{'model':19}{'1-rank img/s':>14}{f'{args.ranks}-rank img/s':>14}{'scaling':>9}{'exposed all-reduce':>20}"
          f"{'ceiling':>9}{'lockstep ceiling':>18}")
    for model in models:
        steps = args.steps or (2 if model == "autoencoder" else 6)
        common = ["--steps", str(steps), "--batch-size", str(args.batch_size)]
        t = run(args.ranks, ["ldm-train", "bench", model, "--json", "--threads", "1", "--scaling-rounds", str(args.rounds)] + common)
        report(model, t, f"{100 * t['exposed_comm_ms'] / t['parallel_step_ms']:19.1f}%")
        if args.pytorch:
            t = run(args.ranks, ["/usr/bin/python3", os.path.join(HERE, "bench_scaling_torch.py"), "--model", model,
                                 "--rounds", str(args.rounds), "--port", str(free_port())] + common)
            report(f"{model} (torch)", t, f"{'-':>20}")


def run(ranks, command):
    """One job through Launch/mpirun-local; its last line of output, as JSON."""
    out = subprocess.run([os.path.join(HERE, "mpirun-local"), "-n", str(ranks)] + command,
                         check=True, capture_output=True, text=True, cwd=ROOT).stdout
    return json.loads(out.strip().splitlines()[-1])


def report(name, t, exposed):
    rounds = ", ".join(f"{s:.2f}x ({c:.2f}x)" for s, c in zip(t["round_scaling"], t["round_ceiling"]))
    print(f"  {name} rounds, scaling (ceiling): {rounds}", file=sys.stderr, flush=True)
    print(f"{name:19}{t['solo_img_per_s']:14.1f}{t['parallel_img_per_s']:14.1f}{t['scaling']:8.2f}x"
          f"{exposed}{t['ceiling']:8.2f}x{t['lockstep_ceiling']:17.2f}x", flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    main()
