"""PyTorch's side of the op benchmark, imported by Launch/bench_vs_pytorch.py.

make_step(shape, channels_last) builds one forward + backward of a shape from
`ldm-train bench ops --list` (NCHW, or channels_last for convs); median_ms times it.
"""
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
