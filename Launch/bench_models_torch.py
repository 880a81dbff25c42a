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
        self.conv_out = nn.Conv2d(cin, (2 if a.get("double_z", True) else 1) * a["z_channels"], 3, padding=1)

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


class AutoencoderTraining(nn.Module):
    """The autoencoder's loss on one batch as a forward (so DDP can wrap it): L1 (or L2)
    summed over pixels and averaged over the batch, plus 1e-6 × KL."""

    def __init__(self, model, x, eps, reconstruction="l1"):
        super().__init__()
        self.model, self.x, self.eps, self.reconstruction = model, x, eps, reconstruction

    def forward(self):
        m, x = self.model, self.x
        moments = m.quant_conv(m.encoder(x))
        mean, logvar = torch.chunk(moments, 2, dim=1)
        logvar = torch.clamp(logvar, -30.0, 20.0)
        z = mean + torch.exp(0.5 * logvar) * self.eps
        rec = m.decoder(m.post_quant_conv(z))
        rec_loss = (torch.abs(x - rec) if self.reconstruction == "l1" else (x - rec) ** 2).sum() / x.shape[0]
        kl = 0.5 * torch.sum(mean ** 2 + torch.exp(logvar) - 1.0 - logvar, dim=[1, 2, 3]).mean()
        return rec_loss + 1e-6 * kl


def autoencoder_step(batch, channels_last=False, wrap=lambda m: m, seed=1, arch=None, reconstruction="l1"):
    """One training step of the reference autoencoder (or `arch`, a config's
    autoencoder.model), as SwiftLDM runs it; `wrap` takes the loss module
    (DistributedDataParallel for the scaling benchmark)."""
    a = arch or REFERENCE_AUTOENCODER
    model = AutoencoderKL(a)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.5, 0.9))
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, a["in_channels"], a["resolution"], a["resolution"], generator=g) * 2 - 1
    f = a["resolution"] // 2 ** (len(a["ch_mult"]) - 1)
    eps = torch.randn(batch, a["embed_dim"], f, f, generator=g)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    loss = wrap(AutoencoderTraining(model, x, eps, reconstruction))

    def step():
        opt.zero_grad(set_to_none=True)
        loss().backward()
        opt.step()
    return step


def time_steps(step, steps, warm_up=2):
    """The median (the upper one for an even count) of `steps` timed calls, in ms."""
    for _ in range(warm_up):
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return times[len(times) // 2]


# ---- the reference UNet "ldm-fmnist" (openaimodel.UNetModel + attention.SpatialTransformer)

def timestep_embedding(t, dim):
    half = dim // 2
    freqs = torch.exp(-torch.log(torch.tensor(10000.0)) * torch.arange(half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepBlock(nn.Module):
    pass


class ResBlock(TimestepBlock):
    def __init__(self, cin, emb, cout):
        super().__init__()
        self.in_layers = nn.Sequential(nn.GroupNorm(32, cin), nn.SiLU(), nn.Conv2d(cin, cout, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb, cout))
        self.out_layers = nn.Sequential(nn.GroupNorm(32, cout), nn.SiLU(), nn.Dropout(0), nn.Conv2d(cout, cout, 3, padding=1))
        self.skip_connection = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)

    def forward(self, x, emb, context):
        h = self.in_layers(x) + self.emb_layers(emb)[:, :, None, None]
        return self.skip_connection(x) + self.out_layers(h)


class CrossAttention(nn.Module):
    def __init__(self, qdim, cdim, heads, dhead):
        super().__init__()
        inner = heads * dhead
        self.heads, self.scale = heads, dhead ** -0.5
        self.to_q = nn.Linear(qdim, inner, bias=False)
        self.to_k = nn.Linear(cdim, inner, bias=False)
        self.to_v = nn.Linear(cdim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, qdim), nn.Dropout(0))

    def forward(self, x, context=None):
        context = x if context is None else context
        q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
        b, h = x.shape[0], self.heads
        q, k, v = (t.reshape(b, t.shape[1], h, -1).permute(0, 2, 1, 3).reshape(b * h, t.shape[1], -1) for t in (q, k, v))
        w = torch.softmax(torch.bmm(q, k.transpose(1, 2)) * self.scale, dim=-1)
        out = torch.bmm(w, v).reshape(b, h, x.shape[1], -1).permute(0, 2, 1, 3).reshape(b, x.shape[1], -1)
        return self.to_out(out)


class GEGLU(nn.Module):
    def __init__(self, dim, inner):
        super().__init__()
        self.proj = nn.Linear(dim, inner * 2)

    def forward(self, x):
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class BasicTransformerBlock(nn.Module):
    def __init__(self, dim, heads, dhead, cdim):
        super().__init__()
        self.attn1 = CrossAttention(dim, dim, heads, dhead)
        self.ff = nn.Module()
        self.ff.net = nn.Sequential(GEGLU(dim, 4 * dim), nn.Dropout(0), nn.Linear(4 * dim, dim))
        self.attn2 = CrossAttention(dim, cdim, heads, dhead)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x, context):
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context) + x
        return self.ff.net(self.norm3(x)) + x


class SpatialTransformer(TimestepBlock):
    def __init__(self, c, heads, dhead, cdim):
        super().__init__()
        self.norm = nn.GroupNorm(32, c, eps=1e-6)
        self.proj_in = nn.Conv2d(c, heads * dhead, 1)
        self.transformer_blocks = nn.ModuleList([BasicTransformerBlock(heads * dhead, heads, dhead, cdim)])
        self.proj_out = nn.Conv2d(heads * dhead, c, 1)

    def forward(self, x, emb, context):
        b, c, h, w = x.shape
        y = self.proj_in(self.norm(x)).reshape(b, c, h * w).permute(0, 2, 1)
        for block in self.transformer_blocks:
            y = block(y, context)
        return self.proj_out(y.permute(0, 2, 1).reshape(b, c, h, w)) + x


class Seq(nn.ModuleList):
    def forward(self, x, emb, context):
        for layer in self:
            x = layer(x, emb, context) if isinstance(layer, TimestepBlock) else layer(x)
        return x


class Downsample(nn.Module):
    """openaimodel.Downsample (key `op`, padding 1); the autoencoder's is `Down` (key `conv`, pad right and bottom)."""

    def __init__(self, c):
        super().__init__()
        self.op = nn.Conv2d(c, c, 3, stride=2, padding=1)

    def forward(self, x):
        return self.op(x)


class UNetModel(nn.Module):
    def __init__(self, a):
        super().__init__()
        mc, ted = a["model_channels"], 4 * a["model_channels"]
        self.mc = mc
        self.time_embed = nn.Sequential(nn.Linear(mc, ted), nn.SiLU(), nn.Linear(ted, ted))
        st = lambda ch: SpatialTransformer(ch, ch // a["num_head_channels"], a["num_head_channels"], a["context_dim"])
        self.input_blocks = nn.ModuleList([Seq([nn.Conv2d(a["in_channels"], mc, 3, padding=1)])])
        chans, ch, ds = [mc], mc, 1
        for level, mult in enumerate(a["channel_mult"]):
            for _ in range(a["num_res_blocks"]):
                layers = [ResBlock(ch, ted, mult * mc)]
                ch = mult * mc
                if ds in a["attention_resolutions"]:
                    layers.append(st(ch))
                self.input_blocks.append(Seq(layers))
                chans.append(ch)
            if level != len(a["channel_mult"]) - 1:
                self.input_blocks.append(Seq([Downsample(ch)]))
                chans.append(ch)
                ds *= 2
        self.middle_block = Seq([ResBlock(ch, ted, ch), st(ch), ResBlock(ch, ted, ch)])
        self.output_blocks = nn.ModuleList()
        for level, mult in list(enumerate(a["channel_mult"]))[::-1]:
            for i in range(a["num_res_blocks"] + 1):
                layers = [ResBlock(ch + chans.pop(), ted, mc * mult)]
                ch = mc * mult
                if ds in a["attention_resolutions"]:
                    layers.append(st(ch))
                if level and i == a["num_res_blocks"]:
                    layers.append(Up(ch))
                    ds //= 2
                self.output_blocks.append(Seq(layers))
        self.out = nn.Sequential(nn.GroupNorm(32, ch), nn.SiLU(), nn.Conv2d(mc, a["out_channels"], 3, padding=1))

    def forward(self, x, t, context):
        emb = self.time_embed(timestep_embedding(t, self.mc))
        hs, h = [], x
        for block in self.input_blocks:
            h = block(h, emb, context)
            hs.append(h)
        h = self.middle_block(h, emb, context)
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1), emb, context)
        return self.out(h)


REFERENCE_UNET = dict(image_size=8, in_channels=4, out_channels=4, model_channels=64, channel_mult=[1, 2], num_res_blocks=2,
                      attention_resolutions=[2], num_head_channels=32, context_dim=64, num_classes=10)


class UNetTraining(nn.Module):
    """The UNet's ε-prediction loss on one batch as a forward (so DDP can wrap it);
    `encoder` (τθ) maps the batch's conditions to the context."""

    def __init__(self, model, encoder, xt, t, conditions, noise):
        super().__init__()
        self.model, self.encoder = model, encoder
        self.xt, self.t, self.conditions, self.noise = xt, t, conditions, noise

    def forward(self):
        return F.mse_loss(self.model(self.xt, self.t, self.encoder(self.conditions)), self.noise)


class ClassEmbedder(nn.Module):
    """One context token per class, plus the null class."""

    def __init__(self, classes, dim):
        super().__init__()
        self.embedding = nn.Embedding(classes + 1, dim)

    def forward(self, labels):
        return self.embedding(labels)[:, None, :]


def diffusion_step(batch, encoder, conditions, channels_last, wrap, generator, arch=None):
    """One training step of the reference UNet (or `arch`, a config's diffusion.model)
    with τθ `encoder` on `conditions`, as SwiftLDM runs it (AdamW, EMA); `wrap` takes
    the loss module (DistributedDataParallel for scaling)."""
    a = arch or REFERENCE_UNET
    model = UNetModel(a)
    params = list(model.parameters()) + list(encoder.parameters())
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)
    ema = [p.detach().clone() for p in params]
    s = a["image_size"]
    z0 = torch.randn(batch, a["in_channels"], s, s, generator=generator)
    noise = torch.randn(batch, a["in_channels"], s, s, generator=generator)
    t = torch.tensor([(i * 7919) % 1000 for i in range(batch)])
    abar = torch.cumprod(1 - torch.linspace(0.0015 ** 0.5, 0.0195 ** 0.5, 1000, dtype=torch.float64) ** 2, 0)[t].float()
    xt = abar.sqrt()[:, None, None, None] * z0 + (1 - abar).sqrt()[:, None, None, None] * noise
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        xt = xt.contiguous(memory_format=torch.channels_last)
    loss = wrap(UNetTraining(model, encoder, xt, t, conditions, noise))

    def step():
        opt.zero_grad(set_to_none=True)
        loss().backward()
        opt.step()
        with torch.no_grad():
            for e, p in zip(ema, params):
                e.mul_(0.9999).add_(p, alpha=1 - 0.9999)
    return step


def unet_step(batch, channels_last=False, wrap=lambda m: m, seed=1):
    """The reference UNet with its class embedder."""
    a = REFERENCE_UNET
    labels = torch.tensor([i % (a["num_classes"] + 1) for i in range(batch)])
    return diffusion_step(batch, ClassEmbedder(a["num_classes"], a["context_dim"]), labels, channels_last, wrap,
                          torch.Generator().manual_seed(seed))


# ---- τθ for text (CompVis TransformerEmbedder: x-transformers' TransformerWrapper + Encoder)

TEXT_ENCODER = dict(vocab_size=1024, max_seq_len=77, n_layer=2, heads=4)


class TextAttention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.to_q, self.to_k, self.to_v = (nn.Linear(dim, dim, bias=False) for _ in range(3))
        self.to_out = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, h = x.shape[0], x.shape[1], self.heads
        q, k, v = (t.reshape(b, n, h, -1).permute(0, 2, 1, 3) for t in (self.to_q(x), self.to_k(x), self.to_v(x)))
        w = torch.softmax(q @ k.transpose(-1, -2) * self.scale, dim=-1)
        return self.to_out((w @ v).permute(0, 2, 1, 3).reshape(b, n, -1))


class TextTransformer(nn.Module):
    """Token and learned positional embeddings, pre-norm self-attention and GELU
    feed-forward layers, a final LayerNorm: the context [N, L, width]."""

    def __init__(self, width, t):
        super().__init__()
        self.token_emb = nn.Embedding(t["vocab_size"], width)
        self.pos_emb = nn.Embedding(t["max_seq_len"], width)
        self.layers = nn.ModuleList()
        for _ in range(t["n_layer"]):
            self.layers.append(nn.ModuleList([nn.LayerNorm(width), TextAttention(width, t["heads"])]))
            self.layers.append(nn.ModuleList([nn.LayerNorm(width), nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(),
                                                                                nn.Linear(4 * width, width))]))
        self.norm = nn.LayerNorm(width)

    def forward(self, ids):
        x = self.token_emb(ids) + self.pos_emb(torch.arange(ids.shape[1]))[None]
        for norm, block in self.layers:
            x = x + block(norm(x))
        return self.norm(x)


def unet_text_step(batch, channels_last=False, wrap=lambda m: m, seed=1, arch=None, text=None):
    """The reference UNet (or `arch`) conditioned on max_seq_len tokens through a jointly
    trained τθ (`text`, a config's diffusion.conditioning.text), as `ldm-train bench unet`
    runs a text model."""
    a, t = arch or REFERENCE_UNET, text or TEXT_ENCODER
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, t["vocab_size"], (batch, t["max_seq_len"]), generator=g)
    return diffusion_step(batch, TextTransformer(a["context_dim"], t), ids, channels_last, wrap, g, a)
