"""PyTorch's side of the scaling benchmark: the rounds of alternating blocks that
`ldm-train bench MODEL --scaling-rounds R` runs, with the reference model (same
architecture, batch and step as Launch/bench_models_torch.py) in
torch.nn.parallel.DistributedDataParallel over gloo, PyTorch's CPU backend. Each
round: rank 0 alone (the other ranks wait in a barrier), every rank on its own
(DDP's no_sync: no gradient exchange), every rank data-parallel. Started under
Launch/mpirun-local by `Launch/bench-scaling --pytorch`; rank 0 prints one JSON line.
"""
import argparse
import json
import os
import statistics

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import bench_models_torch as ref


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, choices=["autoencoder", "unet"])
    parser.add_argument("--batch-size", type=int, default=64, help="per rank")
    parser.add_argument("--steps", type=int, required=True, help="timed steps per block")
    parser.add_argument("--rounds", type=int, required=True)
    parser.add_argument("--port", type=int, required=True, help="rank 0's TCP port for gloo's rendezvous")
    args = parser.parse_args()
    rank, size = int(os.environ["OMPI_COMM_WORLD_RANK"]), int(os.environ["OMPI_COMM_WORLD_SIZE"])
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{args.port}", rank=rank, world_size=size)

    wrapped = []

    def wrap(module):
        wrapped.append(DistributedDataParallel(module, broadcast_buffers=False))
        return wrapped[0]
    make = ref.unet_step if args.model == "unet" else ref.autoencoder_step
    step = make(args.batch_size, wrap=wrap, seed=1 + rank)
    ddp = wrapped[0]

    def local_step():
        with ddp.no_sync():
            step()
    step(); step()
    solo, independent, together = [], [], []
    for r in range(args.rounds):
        for block in ([0, 1, 2] if r % 2 == 0 else [2, 1, 0]):
            dist.barrier()
            if block == 0 and rank == 0:
                solo.append(ref.time_steps(local_step, args.steps, warm_up=0))
            elif block == 1:
                independent.append(ref.time_steps(local_step, args.steps, warm_up=0))
            elif block == 2:
                together.append(ref.time_steps(step, args.steps, warm_up=0))
    gathered = [None] * size
    dist.all_gather_object(gathered, (independent, together))
    if rank == 0:
        img = lambda ms: args.batch_size * 1000 / ms
        solo_img = [img(ms) for ms in solo]
        independent_img = [sum(img(g[0][r]) for g in gathered) for r in range(args.rounds)]
        parallel_img = [sum(img(g[1][r]) for g in gathered) for r in range(args.rounds)]
        lockstep_img = [size * min(img(g[0][r]) for g in gathered) for r in range(args.rounds)]
        ratio = lambda xs: [x / s for x, s in zip(xs, solo_img)]
        print(json.dumps({
            "bench": args.model, "batch_size": args.batch_size, "ranks": size, "rounds": args.rounds,
            "steps_per_block": args.steps, "solo_img_per_s": statistics.median_high(solo_img),
            "independent_img_per_s": statistics.median_high(independent_img),
            "parallel_img_per_s": statistics.median_high(parallel_img),
            "scaling": statistics.median_high(ratio(parallel_img)), "ceiling": statistics.median_high(ratio(independent_img)),
            "lockstep_ceiling": statistics.median_high(ratio(lockstep_img)),
            "round_scaling": ratio(parallel_img), "round_ceiling": ratio(independent_img)}), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
