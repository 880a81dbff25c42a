"""Loads a file written by `ldm-train export` into the reference PyTorch modules of
Launch/bench_models_torch.py (CompVis's module and parameter names), built from the
CompVis model config written beside it, with load_state_dict(strict=True); then runs
them on the inputs SwiftLDM ran its own model on and prints, as JSON, the largest
absolute differences from SwiftLDM's outputs.

    load_exported.py FILE.safetensors FILE.yaml OUTPUTS.h5
"""
import json
import os
import sys

import h5py
import numpy as np
import torch
import torch.nn as nn
import yaml
from safetensors import safe_open
from safetensors.torch import load_file

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "Launch"))
import bench_models_torch as ref  # noqa: E402


class NLayerDiscriminator(nn.Module):
    """pix2pix's PatchGAN as CompVis's LPIPSWithDiscriminator builds it."""

    def __init__(self, input_nc, ndf, n_layers):
        super().__init__()
        seq = [nn.Conv2d(input_nc, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2 ** n, 8)
            seq += [nn.Conv2d(ndf * prev, ndf * mult, 4, 2 if n < n_layers else 1, 1, bias=False), nn.BatchNorm2d(ndf * mult),
                    nn.LeakyReLU(0.2, True)]
        seq += [nn.Conv2d(ndf * mult, 1, 4, 1, 1)]
        self.main = nn.Sequential(*seq)

    def forward(self, x):
        return self.main(x)


def autoencoder(params):
    a = dict(params["ddconfig"])
    a["embed_dim"] = params["embed_dim"]
    ae = ref.AutoencoderKL(a)
    if "n_embed" in params:   # VQModel: quant_conv z → e, and the codebook
        ae.quant_conv = nn.Conv2d(a["z_channels"], a["embed_dim"], 1)
        ae.quantize = nn.Module()
        ae.quantize.embedding = nn.Embedding(params["n_embed"], a["embed_dim"])
    return ae


def quantized(ae, h):
    """VectorQuantizer2's nearest code by squared distance, in NCHW."""
    if not hasattr(ae, "quantize"):
        return h
    flat = h.permute(0, 2, 3, 1).reshape(-1, h.shape[1])
    e = ae.quantize.embedding.weight
    d = (flat ** 2).sum(1, keepdim=True) + (e ** 2).sum(1) - 2 * flat @ e.t()
    return e[d.argmin(1)].reshape(h.shape[0], h.shape[2], h.shape[3], h.shape[1]).permute(0, 3, 1, 2)


def schedule(p):
    """CompVis DDPM.register_schedule for beta_schedule 'linear' (linear in sqrt(beta))."""
    assert p["beta_schedule"] == "linear"
    betas = torch.linspace(p["linear_start"] ** 0.5, p["linear_end"] ** 0.5, p["timesteps"], dtype=torch.float64) ** 2
    betas = betas.numpy()
    alphas = 1.0 - betas
    abar = np.cumprod(alphas)
    prev = np.append(1.0, abar[:-1])
    post = betas * (1.0 - prev) / (1.0 - abar)
    return {"betas": betas, "alphas_cumprod": abar, "alphas_cumprod_prev": prev, "sqrt_alphas_cumprod": np.sqrt(abar),
            "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - abar), "log_one_minus_alphas_cumprod": np.log(1.0 - abar),
            "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / abar), "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / abar - 1),
            "posterior_variance": post, "posterior_log_variance_clipped": np.log(np.maximum(post, 1e-20)),
            "posterior_mean_coef1": betas * np.sqrt(prev) / (1.0 - abar),
            "posterior_mean_coef2": (1.0 - prev) * np.sqrt(alphas) / (1.0 - abar)}


def nchw(a):
    return torch.from_numpy(np.ascontiguousarray(np.transpose(a, (0, 3, 1, 2))))


def worst(a, b):
    return float(np.abs(a.detach().numpy() - np.transpose(b, (0, 3, 1, 2))).max())


def main(path, config, outputs):
    cfg = yaml.safe_load(open(config))["model"]
    p = cfg["params"]
    sd = load_file(path)
    meta = safe_open(path, "pt").metadata()
    out = h5py.File(outputs, "r")
    result = {"tensors": len(sd), "layout": meta["layout"]}
    torch.manual_seed(0)
    with torch.no_grad():
        if cfg["target"] in ("ldm.models.autoencoder.AutoencoderKL", "ldm.models.autoencoder.VQModel"):
            ae = autoencoder(p)
            ae.load_state_dict({k: v for k, v in sd.items() if not k.startswith("loss.")}, strict=True)
            x = nchw(out["x"][...])
            moments = ae.quant_conv(ae.encoder(x))
            if hasattr(ae, "quantize"):
                result["mean"] = worst(moments, out["mean"][...])
            else:
                mean, logvar = torch.chunk(moments, 2, dim=1)
                result["mean"] = worst(mean, out["mean"][...])
                result["logvar"] = worst(torch.clamp(logvar, -30.0, 20.0), out["logvar"][...])
            z = quantized(ae, nchw(out["z"][...]))
            result["decoded"] = worst(ae.decoder(ae.post_quant_conv(z)), out["decoded"][...])
            if p["lossconfig"]["target"] == "ldm.modules.losses.LPIPSWithDiscriminator":
                lp = p["lossconfig"]["params"]
                loss = nn.Module()
                loss.discriminator = NLayerDiscriminator(lp["disc_in_channels"], lp["disc_ndf"], lp["disc_num_layers"])
                loss.logvar = nn.Parameter(torch.zeros(()))
                loss.load_state_dict({k[len("loss."):]: v for k, v in sd.items() if k.startswith("loss.")}, strict=True)
                result["batches_tracked"] = int(loss.discriminator.main[3].num_batches_tracked)
                loss.train()   # SwiftLDM's discriminator normalises with the batch's statistics
                result["logits"] = worst(loss.discriminator(x), out["logits"][...])
        else:
            u = dict(p["unet_config"]["params"])
            container = nn.Module()
            container.model = nn.Module()
            container.model.diffusion_model = ref.UNetModel(u)
            c = p["cond_stage_config"]
            assert c["target"] == "ldm.modules.encoders.modules.ClassEmbedder"
            container.cond_stage_model = ref.ClassEmbedder(c["params"]["n_classes"] - 1, c["params"]["embed_dim"])
            expected = {}
            if meta["layout"] == "latent_diffusion":
                container.first_stage_model = autoencoder(p["first_stage_config"]["params"])
                expected = schedule(p)
                for k, v in expected.items():
                    container.register_buffer(k, torch.zeros(len(v)))
            container.load_state_dict(sd, strict=True)
            result["schedule"] = max([float(np.abs(sd[k].double().numpy() - v).max() / np.abs(v).max()) for k, v in expected.items()],
                                     default=0.0)
            zt, t, labels = nchw(out["zt"][...]), torch.from_numpy(out["t"][...]), torch.from_numpy(out["labels"][...]).long()
            eps = container.model.diffusion_model(zt, t, container.cond_stage_model(labels))
            target = out["eps_ema" if meta["ema"] == "true" else "eps"][...]
            result["eps"] = worst(eps, target)
            result["eps_scale"] = float(np.abs(target).max())
    print(json.dumps(result))


if __name__ == "__main__":
    main(*sys.argv[1:])
