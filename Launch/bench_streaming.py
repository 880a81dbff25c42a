"""The work of Launch/bench-streaming (run that script: it builds and installs first)."""
import argparse, json, os, shutil, statistics, subprocess, tempfile
import h5py
import numpy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LDM = os.path.join(ROOT, ".build/release/ldm-train")


def repeated(source, out, times):
    """`source` with its train rows repeated `times` times (same format, same test split)."""
    with h5py.File(source, "r") as f, h5py.File(out, "w", libver=("v110", "v110")) as g:
        n = f["train/images"].shape[0]
        for name, value in f.attrs.items():
            g.attrs[name] = value
        for key in ("test/images", "test/labels", "test/captions", "test/file_name", "skipped/file_name", "skipped/reason"):
            f.copy(key, g, name=key)
        images = f["train/images"]
        out_images = g.create_dataset("train/images", (n * times,) + images.shape[1:], images.dtype, chunks=images.chunks,
                                      fletcher32=True)
        strings = h5py.string_dtype("utf-8")
        labels = f["train/labels"][:]
        captions, names = f["train/captions"].asstr()[:], f["train/file_name"].asstr()[:]
        g.create_dataset("train/labels", data=numpy.tile(labels, times), dtype="i4")
        g.create_dataset("train/captions", data=list(captions) * times, dtype=strings)
        g.create_dataset("train/file_name", data=["%s (copy %d)" % (s, k) for k in range(times) for s in names], dtype=strings)
        block = 10000
        for k in range(times):
            for start in range(0, n, block):
                out_images[k * n + start:k * n + min(n, start + block)] = images[start:min(n, start + block)]


def train(data, ranks, steps, run):
    subprocess.run([os.path.join(ROOT, "Launch/mpirun-local"), "-n", str(ranks), "ldm-train", "autoencoder", "--data", data,
                    "--run-dir", run, "--steps", str(steps), "--resume", "none",
                    "--set", "autoencoder.training.log_every=10", "--set", "autoencoder.training.eval_images=200",
                    "--set", "autoencoder.training.image_every=100000", "--set", "autoencoder.training.checkpoint_every=100000"],
                   check=True, stdout=subprocess.DEVNULL, cwd=ROOT)
    records = [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl"))]
    rates = [r["img_per_s"] for r in records if "img_per_s" in r][1:]   # the first window holds the warm-up
    return statistics.median(rates), records[-1]["peak_rss_mib"]


def main():
    a = argparse.ArgumentParser()
    a.add_argument("--ranks", type=int, default=2)
    a.add_argument("--steps", type=int, default=60)
    a.add_argument("--rounds", type=int, default=3)
    a.add_argument("--times", type=int, default=10)
    args = a.parse_args()
    base = os.path.join(ROOT, "Datasets/fashion-mnist.h5")
    if not os.path.exists(base):
        subprocess.run([LDM, "prepare", "--out", base], check=True, cwd=ROOT)
    work = tempfile.mkdtemp(prefix="swiftldm-streaming-")
    big = os.path.join(work, "fashion-mnist-x%d.h5" % args.times)
    repeated(base, big, args.times)
    print("files: %s (%d MB), %s (%d MB)" % (base, os.path.getsize(base) >> 20, big, os.path.getsize(big) >> 20))
    results = {base: [], big: []}
    for r in range(args.rounds):
        for data in ([base, big] if r % 2 == 0 else [big, base]):   # alternate, so both see the same machine
            rate, rss = train(data, args.ranks, args.steps, os.path.join(work, "run"))
            shutil.rmtree(os.path.join(work, "run"))
            results[data].append((rate, rss))
            print("round %d  %-60s %7.1f img/s  peak RSS %6.0f MiB" % (r + 1, os.path.basename(data), rate, rss), flush=True)
    (r1, m1), (r2, m2) = [(statistics.median(x[0] for x in results[d]), statistics.median(x[1] for x in results[d])) for d in (base, big)]
    print("median: 60k rows %.1f img/s, %.0f MiB; %dx rows %.1f img/s, %.0f MiB; img/s ratio %.3f, RSS ratio %.3f"
          % (r1, m1, args.times, r2, m2, r2 / r1, m2 / m1))
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
