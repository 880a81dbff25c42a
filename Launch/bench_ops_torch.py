#!/usr/bin/python3
"""Times forward + backward of SwiftLDM's reference-model op shapes in PyTorch.

Reads the shapes as JSON lines (from `ldm-train bench ops --list`) on stdin and
prints one JSON object per shape with the median milliseconds, in PyTorch's default
NCHW layout and in channels_last. Used by Launch/bench-vs-pytorch.
"""
import json
import sys
import time

import torch
import torch.nn.functional as F


def median_ms(step, seconds):
    step(); step()
    times, start = [], time.perf_counter()
    while len(times) < 3 or (len(times) < 200 and time.perf_counter() - start < seconds):
        t0 = time.perf_counter()
        step()
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return times[len(times) // 2]


def make_step(s, channels_last):
    g = torch.Generator().manual_seed(11)

    def t(*shape, grad=True):
        x = torch.randn(*shape, generator=g)
        if channels_last and len(shape) == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x.requires_grad_(grad)

    kind = s["kind"]
    if kind == "conv":
        x = t(s["n"], s["c"], s["h"], s["w"], grad=s["inputGrad"])
        w, b = t(s["o"], s["c"], s["k"], s["k"]), t(s["o"])
        top, bottom, left, right = s["padding"]
        if top == bottom and left == right:
            op = lambda: F.conv2d(x, w, b, stride=s["stride"], padding=(top, left))
        else:  # LDM downsample: pad right/bottom, then an unpadded conv, as CompVis does
            op = lambda: F.conv2d(F.pad(x, (left, right, top, bottom)), w, b, stride=s["stride"])
        leaves = [x, w, b]
    elif kind == "matmul" and s["linear"]:
        x, w = t(s["m"], s["kDim"]), t(s["nDim"], s["kDim"])
        op, leaves = (lambda: F.linear(x, w)), [x, w]
    elif kind == "matmul":
        a, b = t(s["batch"], s["m"], s["kDim"]), t(s["batch"], s["kDim"], s["nDim"])
        op, leaves = (lambda: torch.bmm(a, b)), [a, b]
    elif kind == "groupNorm":
        n, h, w_, c = s["dims"]
        x, w, b = t(n, c, h, w_), t(c), t(c)
        op, leaves = (lambda: F.group_norm(x, s["groups"], w, b, eps=1e-6)), [x, w, b]
    elif kind == "layerNorm":
        x, w, b = t(*s["dims"]), t(s["dims"][-1]), t(s["dims"][-1])
        op, leaves = (lambda: F.layer_norm(x, (s["dims"][-1],), w, b)), [x, w, b]
    elif kind == "softmax":
        x = t(*s["dims"])
        op, leaves = (lambda: torch.softmax(x, dim=-1)), [x]
    elif kind == "silu":
        dims = s["dims"]
        x = t(dims[0], dims[3], dims[1], dims[2])
        op, leaves = (lambda: F.silu(x)), [x]
    elif kind == "add":
        dims = s["dims"]
        a, b = t(dims[0], dims[3], dims[1], dims[2]), t(dims[0], dims[3], dims[1], dims[2])
        op, leaves = (lambda: a + b), [a, b]
    else:
        raise SystemExit(f"bench_ops_torch.py: unknown op kind {kind!r}")
    with torch.no_grad():
        dy = op().detach().clone()

    def step():
        op().backward(dy)
        for leaf in leaves:
            leaf.grad = None
    return step


def main():
    threads = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 0.5
    torch.set_num_threads(threads)
    for line in sys.stdin:
        if not line.strip():
            continue
        s = json.loads(line)
        out = {"model": s["model"], "name": s["name"], "threads": torch.get_num_threads()}
        out["nchw_ms"] = median_ms(make_step(s, False), seconds)
        out["channels_last_ms"] = median_ms(make_step(s, True), seconds) if s["kind"] in ("conv",) else out["nchw_ms"]
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
