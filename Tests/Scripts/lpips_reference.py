"""LPIPS ("vgg", Zhang et al. 2018) written with torch.nn as the lpips package and
CompVis compute it: ScalingLayer, torchvision's VGG16 `features` (configuration D),
unit-normalised relu1_2 … relu5_3, 1×1 heads without bias, spatial mean, sum. Loads
the weights SwiftLDM used (safetensors, torchvision's and LPIPS's names, strictly), runs
the images SwiftLDM ran, and prints as JSON the largest differences from SwiftLDM's
distances and from its gradient of sum(r · distance) with respect to both images.

    lpips_reference.py WEIGHTS.safetensors IO.h5
"""
import json
import sys

import h5py
import numpy as np
import torch
import torch.nn as nn
from safetensors.torch import load_file

WIDTHS = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
TAPS = [3, 8, 15, 22, 29]   # the ReLUs after conv1_2, conv2_2, conv3_3, conv4_3, conv5_3


class LPIPS(nn.Module):
    def __init__(self):
        super().__init__()
        layers, c = [], 3
        for w in WIDTHS:
            if w == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c, w, 3, padding=1), nn.ReLU(inplace=False)]
                c = w
        self.features = nn.Sequential(*layers)
        for k, chn in enumerate([64, 128, 256, 512, 512]):
            head = nn.Module()
            head.model = nn.Sequential(nn.Dropout(), nn.Conv2d(chn, 1, 1, bias=False))
            setattr(self, "lin%d" % k, head)
        self.register_buffer("shift", torch.tensor([-.030, -.088, -.188])[None, :, None, None], persistent=False)
        self.register_buffer("scale", torch.tensor([.458, .448, .450])[None, :, None, None], persistent=False)

    def taps(self, x):
        h, out = (x - self.shift) / self.scale, []
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in TAPS:
                out.append(h / (torch.sqrt(torch.sum(h ** 2, dim=1, keepdim=True)) + 1e-10))
            if i == TAPS[-1]:
                break
        return out

    def forward(self, x0, x1):
        if x0.shape[1] == 1:
            x0, x1 = x0.repeat(1, 3, 1, 1), x1.repeat(1, 3, 1, 1)
        total = 0
        for k, (a, b) in enumerate(zip(self.taps(x0), self.taps(x1))):
            total = total + getattr(self, "lin%d" % k).model((a - b) ** 2).mean(dim=[1, 2, 3])
        return total


def main(weights, io):
    net = LPIPS().double()
    sd = {k: v.double() for k, v in load_file(weights).items() if not k.startswith("classifier.")}
    net.load_state_dict(sd, strict=True)
    net.eval()   # dropout off
    f = h5py.File(io, "r")
    nchw = lambda a: torch.from_numpy(np.transpose(a, (0, 3, 1, 2)).astype(np.float64)).requires_grad_(True)
    x0, x1 = nchw(f["x0"][...]), nchw(f["x1"][...])
    r = torch.from_numpy(f["r"][...].astype(np.float64))
    d = net(x0, x1)
    (r * d).sum().backward()
    back = lambda g: np.transpose(g.numpy(), (0, 2, 3, 1))
    value, g0, g1 = f["value"][...], f["grad0"][...], f["grad1"][...]
    print(json.dumps({
        "value": float(np.abs(d.detach().numpy() - value).max() / np.abs(d.detach().numpy()).max()),
        "grad0": float(np.abs(back(x0.grad) - g0).max() / np.abs(back(x0.grad)).max()),
        "grad1": float(np.abs(back(x1.grad) - g1).max() / np.abs(back(x1.grad)).max()),
        "scale": float(np.abs(d.detach().numpy()).max()),
    }))


if __name__ == "__main__":
    main(*sys.argv[1:])
