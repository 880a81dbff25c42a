"""Judges generated Fashion-MNIST samples with a classifier that never saw them.

Trains a small CNN on the training split of Datasets/fashion-mnist.h5 (or loads it
from --model if it exists), reports its accuracy on the held-out test split, then
classifies the images of a samples file (`ldm-train sample --images-out`: `images`
[N,1,32,32] in [-1,1], `labels` [N]) and reports how many are judged as the class
they were sampled for, per class and overall. Samples of a text model carry
`prompts` [N] instead: --prompt-classes maps each prompt to its class (the JSON that
Launch/make-fmnist-text-folder writes).

It also reports the Frechet distance between the samples and the test split in the
classifier's 256-d penultimate features (FID's formula with this classifier in place
of Inception), beside the distance of as many real training images to the test split:
the floor that finite N sets, so diversity is judged, not only class accuracy.
"""
import json
import argparse
import os
import sys
import time

import h5py
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from frechet import frechet

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def padded(images_u8):
    """u8 [N,1,28,28] -> f32 [N,1,32,32] in [-1,1], zero-padded as ldm-train pads."""
    x = np.pad(images_u8, ((0, 0), (0, 0), (2, 2), (2, 2)))
    return torch.from_numpy(x.astype(np.float32) / 127.5 - 1)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 32, 3, padding=1)
        self.c2 = nn.Conv2d(32, 64, 3, padding=1)
        self.c3 = nn.Conv2d(64, 128, 3, padding=1)
        self.fc1 = nn.Linear(128 * 4 * 4, 256)
        self.fc2 = nn.Linear(256, 10)
        self.drop = nn.Dropout(0.3)

    def features(self, x):
        x = F.max_pool2d(F.relu(self.c1(x)), 2)
        x = F.max_pool2d(F.relu(self.c2(x)), 2)
        x = F.max_pool2d(F.relu(self.c3(x)), 2)
        return F.relu(self.fc1(x.flatten(1)))

    def forward(self, x):
        return self.fc2(self.drop(self.features(x)))


def features(net, x, batch=500):
    net.eval()
    with torch.no_grad():
        return torch.cat([net.features(x[i:i + batch]) for i in range(0, len(x), batch)]).numpy()


def predict(net, x, batch=500):
    net.eval()
    with torch.no_grad():
        return torch.cat([net(x[i:i + batch]).argmax(1) for i in range(0, len(x), batch)])


def train(data, epochs, seed):
    torch.manual_seed(seed)
    with h5py.File(data, "r") as f:
        x, y = padded(f["train/images"][:]), torch.from_numpy(f["train/labels"][:].astype(np.int64))
    net = Net()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    steps = epochs * (len(x) // 128)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    start = time.time()
    for epoch in range(epochs):
        net.train()
        order = torch.randperm(len(x))
        for i in range(0, len(x) - 127, 128):
            idx = order[i:i + 128]
            xb = x[idx]
            flip = torch.rand(len(idx)) < 0.5
            xb[flip] = xb[flip].flip(3)
            loss = F.cross_entropy(net(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        print(f"classifier epoch {epoch + 1}/{epochs}: loss {loss.item():.3f} ({time.time() - start:.0f} s)", flush=True)
    return net


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("samples", help="an HDF5 file with `images` [N,1,32,32] and `labels` [N]")
    p.add_argument("--data", default="Datasets/fashion-mnist.h5")
    p.add_argument("--model", default="Checkpoints/classifier/fmnist-cnn.pt", help="trained here if missing")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prompt-classes", help="JSON {prompt: class}: judge a text model's samples (`prompts` [N]) against these classes")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    for path in (a.samples, a.data):
        if not os.path.exists(path):
            sys.exit(f"classify-samples: {path}: no such file")

    if os.path.exists(a.model):
        net = Net()
        net.load_state_dict(torch.load(a.model))
    else:
        net = train(a.data, a.epochs, a.seed)
        os.makedirs(os.path.dirname(a.model) or ".", exist_ok=True)
        torch.save(net.state_dict(), a.model)
    with h5py.File(a.data, "r") as f:
        tx, ty = padded(f["test/images"][:]), torch.from_numpy(f["test/labels"][:].astype(np.int64))
    print(f"classifier ({a.model}): {100 * (predict(net, tx) == ty).float().mean():.2f}% on the 10000 held-out test images")

    with h5py.File(a.samples, "r") as f:
        for key in ("images", "prompts" if a.prompt_classes else "labels"):
            if key not in f:
                sys.exit(f"classify-samples: {a.samples}: no dataset `{key}`")
        x = torch.from_numpy(f["images"][:].astype(np.float32))
        if a.prompt_classes:
            with open(a.prompt_classes) as m:
                classes = json.load(m)
            prompts = list(f["prompts"].asstr()[:])
            unknown = sorted(set(prompts) - set(classes))
            if unknown:
                sys.exit(f"classify-samples: {a.prompt_classes} has no class for the prompt {unknown[0]!r}")
            y = torch.tensor([classes[q] for q in prompts], dtype=torch.int64)
        else:
            y = torch.from_numpy(f["labels"][:].astype(np.int64))
    if x.ndim != 4 or tuple(x.shape[1:]) != (1, 32, 32) or len(y) != len(x):
        sys.exit(f"classify-samples: {a.samples}: `images` must be [N,1,32,32] with N labels, got {tuple(x.shape)} and {len(y)}")
    judged = predict(net, x)
    for k in sorted(set(y.tolist())):
        sel = y == k
        print(f"  class {k} {CLASSES[k]:<12} {100 * (judged[sel] == k).float().mean():6.1f}% of {int(sel.sum())}")
    print(f"samples judged as their class: {100 * (judged == y).float().mean():.2f}% of {len(y)} ({a.samples})")
    test_features = features(net, tx)
    with h5py.File(a.data, "r") as f:
        pick = np.sort(np.random.default_rng(a.seed).choice(len(f["train/labels"]), size=len(x), replace=False))
        real = padded(f["train/images"][pick])
    print(f"Frechet distance to the test split in the classifier's features: samples {frechet(features(net, x), test_features):.2f}, "
          f"{len(x)} real training images {frechet(features(net, real), test_features):.2f} (the floor at this N)")


if __name__ == "__main__":
    main()
