"""Whole-model benchmark: a training step of each reference model (forward,
backward, optimizer; the UNet class-conditioned, and text-conditioned with τθ) and of
the 64×64 RGB emoji recipe's models (Launch/configs/emoji.yaml: the kl-f4 autoencoder
on 64×64×3 images, the text-conditioned UNet on its 16×16×4 latents) in SwiftLDM
(`ldm-train bench autoencoder|unet --json`) and in PyTorch
(Launch/bench_models_torch.py, the same architectures), same batch and thread count. The sides never run at once; rounds alternate them, and each side's
figure is its best median over the rounds. Run through Launch/bench-models-vs-pytorch.
"""
import argparse
import functools
import json
import os
import subprocess
import sys

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BINARY = os.path.join(ROOT, ".build", "release", "ldm-train")


# unet-text: the reference UNet with τθ over a full context, as in bench_models_torch.TEXT_ENCODER;
# autoencoder-64 and unet-emoji: the emoji recipe's models, which the PyTorch side reads from the same file.
EMOJI = "Launch/configs/emoji.yaml"
SWIFT_SETTINGS = {"unet-text": ["--set", "diffusion.conditioning.kind=text", "--set", "diffusion.conditioning.text.vocab_size=1024",
                                "--set", "diffusion.conditioning.text.max_seq_len=77", "--set", "diffusion.conditioning.text.n_layer=2",
                                "--set", "diffusion.conditioning.text.heads=4"],
                  "autoencoder-64": ["--config", EMOJI], "unet-emoji": ["--config", EMOJI]}


def torch_makers(ref):
    """The PyTorch training step of each model, by name."""
    emoji = yaml.safe_load(open(os.path.join(ROOT, EMOJI)))
    return {"autoencoder": ref.autoencoder_step, "unet": ref.unet_step, "unet-text": ref.unet_text_step,
            "autoencoder-64": functools.partial(ref.autoencoder_step, arch=emoji["autoencoder"]["model"],
                                                reconstruction=emoji["autoencoder"]["loss"]["reconstruction"]),
            "unet-emoji": functools.partial(ref.unet_text_step, arch=emoji["diffusion"]["model"],
                                            text=emoji["diffusion"]["conditioning"]["text"])}


def peak_rss_mib():
    """This process's peak resident set (VmHWM), as `ldm-train bench` reports its own."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--model", default="all", choices=["autoencoder", "unet", "unet-text", "autoencoder-64", "unet-emoji", "all"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=0, help="timed steps per round (default: 3 autoencoder, 10 unet and unet-text)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "both"],
                        help="SwiftLDM's compute precision; both: fp32 and bf16 alternately, with their ratio (PyTorch is fp32)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for SwiftLDM's side (repeatable), e.g. engine.winograd_input=recompute")
    parser.add_argument("--torch-peak-rss", action="store_true",
                        help="(internal) run 3 PyTorch steps of --model in this fresh process and print its peak RSS in MiB")
    args = parser.parse_args()
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "LDM_THREADS"):
        os.environ[var] = str(args.threads)
    sys.path.insert(0, HERE)
    import torch
    import bench_models_torch as ref
    torch.set_num_threads(args.threads)
    makers = torch_makers(ref)
    if args.torch_peak_rss:
        step = makers[args.model](args.batch_size, False)
        for _ in range(3):
            step()
        print(peak_rss_mib())
        return

    models = list(makers) if args.model == "all" else [args.model]
    overrides = [a for kv in args.set for a in ("--set", kv)]
    print(f"training step at batch {args.batch_size}, {args.threads} thread(s) each side, best median of {args.rounds} alternating rounds; "
          "peak RSS of each side's process (PyTorch's in a fresh one)" + (f"; SwiftLDM with {', '.join(args.set)}" if args.set else ""))
    print(f"{'model':20}{'swift ms':>10}{'swift img/s':>13}{'torch ms':>10}{'torch img/s':>13}{'torch cl':>10}{'speedup':>9}"
          f"{'swift RSS':>11}{'torch RSS':>11}{'RSS ratio':>11}")
    precisions = ["fp32", "bf16"] if args.precision == "both" else [args.precision]
    for model in models:
        steps = args.steps or (3 if model.startswith("autoencoder") else 10)
        make = makers[model]
        ours = {p: float("inf") for p in precisions}
        rss = {p: 0.0 for p in precisions}
        theirs, theirs_cl = float("inf"), float("inf")
        for r in range(args.rounds):
            for precision in precisions:
                out = subprocess.run([BINARY, "bench", model.split("-")[0], "--json", "--steps", str(steps), "--batch-size", str(args.batch_size),
                                      "--threads", str(args.threads), "--precision", precision] + SWIFT_SETTINGS.get(model, []) + overrides,
                                     check=True, capture_output=True, text=True, cwd=ROOT).stdout
                row = json.loads(out.strip().splitlines()[-1])
                ours[precision], rss[precision] = min(ours[precision], row["step_ms"]), max(rss[precision], row["peak_rss_mib"])
                print(f"  round {r + 1}: swift {precision} {row['step_ms']:.1f} ms", file=sys.stderr, flush=True)
            theirs = min(theirs, ref.time_steps(make(args.batch_size, False), steps))
            theirs_cl = min(theirs_cl, ref.time_steps(make(args.batch_size, True), steps))
        torch_rss = float(subprocess.run([sys.executable, os.path.abspath(__file__), "--torch-peak-rss", "--model", model,
                                          "--batch-size", str(args.batch_size), "--threads", str(args.threads)],
                                         check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
        best = min(theirs, theirs_cl)
        img = lambda ms: args.batch_size * 1000 / ms
        for precision in precisions:
            name = model if len(precisions) == 1 else f"{model} {precision}"
            print(f"{name:20}{ours[precision]:10.1f}{img(ours[precision]):13.1f}{theirs:10.1f}{img(theirs):13.1f}{theirs_cl:10.1f}"
                  f"{best / ours[precision]:8.2f}x{rss[precision]:7.0f} MiB{torch_rss:7.0f} MiB{rss[precision] / torch_rss:10.2f}x", flush=True)
        if len(precisions) == 2:
            print(f"{model}: bf16 steps {ours['fp32'] / ours['bf16']:.2f}x the fp32 steps", flush=True)


if __name__ == "__main__":
    main()
