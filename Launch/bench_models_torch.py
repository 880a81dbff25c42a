"""PyTorch's side of the whole-model benchmark, imported by Launch/bench_models_vs_pytorch.py.

The reference models written with torch.nn after CompVis latent-diffusion
(ldm/modules/diffusionmodules/model.py), same architecture and parameter keys as
SwiftLDM's, trained the same way per step: forward, loss, backward, Adam.
"""
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def norm(c):
    return nn.GroupNorm(32, c, eps=1e-6)


class ResnetBlock(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.norm1, self.conv1 = norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (self.nin_shortcut(x) if self.nin_shortcut is not None else x) + h


class AttnBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.norm = norm(c)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(c, c, 1) for _ in range(4))

    def forward(self, x):
        h = self.norm(x)
        q, k, v = self.q(h), self.k(h), self.v(h)
        b, c, hh, ww = q.shape
        q = q.reshape(b, c, hh * ww).permute(0, 2, 1)
        k = k.reshape(b, c, hh * ww)
        w = torch.softmax(torch.bmm(q, k) * c ** -0.5, dim=2)
        h = torch.bmm(v.reshape(b, c, hh * ww), w.permute(0, 2, 1)).reshape(b, c, hh, ww)
        return x + self.proj_out(h)


class Down(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=2)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Up(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Mid(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.block_1, self.attn_1, self.block_2 = ResnetBlock(c, c), AttnBlock(c), ResnetBlock(c, c)

    def forward(self, x):
        return self.block_2(self.attn_1(self.block_1(x)))


class Encoder(nn.Module):
    def __init__(self, a):
        super().__init__()
        ch, mult = a["ch"], a["ch_mult"]
        self.conv_in = nn.Conv2d(a["in_channels"], ch, 3, padding=1)
        self.down = nn.ModuleList()
        cin = ch
        for i, m in enumerate(mult):
            level = nn.Module()
            level.block = nn.ModuleList()
            for _ in range(a["num_res_blocks"]):
                level.block.append(ResnetBlock(cin, ch * m))
                cin = ch * m
            if i != len(mult) - 1:
                level.downsample = Down(cin)
            self.down.append(level)
        self.mid = Mid(cin)
        self.norm_out = norm(cin)
        self.conv_out = nn.Conv2d(cin, 2 * a["z_channels"], 3, padding=1)

    def forward(self, x):
        h = self.conv_in(x)
        for level in self.down:
            for b in level.block:
                h = b(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        return self.conv_out(F.silu(self.norm_out(self.mid(h))))


class Decoder(nn.Module):
    def __init__(self, a):
        super().__init__()
        ch, mult = a["ch"], a["ch_mult"]
        cin = ch * mult[-1]
        self.conv_in = nn.Conv2d(a["z_channels"], cin, 3, padding=1)
        self.mid = Mid(cin)
        self.up = nn.ModuleList()
        for i in reversed(range(len(mult))):
            level = nn.Module()
            level.block = nn.ModuleList()
            for _ in range(a["num_res_blocks"] + 1):
                level.block.append(ResnetBlock(cin, ch * mult[i]))
                cin = ch * mult[i]
            if i != 0:
                level.upsample = Up(cin)
            self.up.insert(0, level)
        self.norm_out = norm(cin)
        self.conv_out = nn.Conv2d(cin, a["out_ch"], 3, padding=1)

    def forward(self, z):
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            for b in level.block:
                h = b(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class AutoencoderKL(nn.Module):
    def __init__(self, a):
        super().__init__()
        self.encoder, self.decoder = Encoder(a), Decoder(a)
        self.quant_conv = nn.Conv2d(2 * a["z_channels"], 2 * a["embed_dim"], 1)
        self.post_quant_conv = nn.Conv2d(a["embed_dim"], a["z_channels"], 1)


REFERENCE_AUTOENCODER = dict(in_channels=1, out_ch=1, resolution=32, ch=64, ch_mult=[1, 2, 4], num_res_blocks=1,
                             z_channels=4, embed_dim=4)


def autoencoder_step(batch, channels_last=False):
    """One training step of the reference autoencoder, as SwiftLDM runs it."""
    a = REFERENCE_AUTOENCODER
    model = AutoencoderKL(a)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.5, 0.9))
    g = torch.Generator().manual_seed(1)
    x = torch.rand(batch, a["in_channels"], a["resolution"], a["resolution"], generator=g) * 2 - 1
    f = a["resolution"] // 2 ** (len(a["ch_mult"]) - 1)
    eps = torch.randn(batch, a["embed_dim"], f, f, generator=g)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)

    def step():
        opt.zero_grad(set_to_none=True)
        moments = model.quant_conv(model.encoder(x))
        mean, logvar = torch.chunk(moments, 2, dim=1)
        logvar = torch.clamp(logvar, -30.0, 20.0)
        z = mean + torch.exp(0.5 * logvar) * eps
        rec = model.decoder(model.post_quant_conv(z))
        rec_loss = torch.abs(x - rec).sum() / batch
        kl = 0.5 * torch.sum(mean ** 2 + torch.exp(logvar) - 1.0 - logvar, dim=[1, 2, 3]).mean()
        (rec_loss + 1e-6 * kl).backward()
        opt.step()
    return step


def time_steps(step, steps):
    step(); step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return times[len(times) // 2]
