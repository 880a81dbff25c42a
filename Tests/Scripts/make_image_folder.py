"""Writes an image folder for the data tests: every PNG colour type, JPEG kinds,
sizes from 17x23 to 300x200, class subfolders, a metadata.jsonl with non-ASCII
captions, and (with --bad KIND) one bad input of the kind named.

    python3 make_image_folder.py OUT [--bad KIND] [--splits]
"""
import argparse, json, os, struct, zlib
import numpy as np
from PIL import Image


def pattern(w, h, c, seed):
    """Smooth gradients plus noise, so resampling has edges and detail to get wrong."""
    rng = np.random.RandomState(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = [(x * (3 + k) + y * (5 - k) + 40 * np.sin((x + y * k) / 7.0)) for k in range(c)]
    img = np.stack(base, -1) + rng.randint(-30, 30, (h, w, c))
    return np.clip(img % 256, 0, 255).astype(np.uint8)


def write_png16(path, arr16):
    """A 16-bit gray, RGB or RGBA PNG (Pillow cannot write 16-bit colour), by hand."""
    h, w = arr16.shape[:2]
    c = 1 if arr16.ndim == 2 else arr16.shape[2]
    color_type = {1: 0, 3: 2, 4: 6}[c]
    raw = b"".join(b"\x00" + arr16[r].astype(">u2").tobytes() for r in range(h))
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def make(out, bad=None, splits=False):
    roots = {"train": os.path.join(out, "train"), "test": os.path.join(out, "test")} if splits else {"": out}
    for split, root in roots.items():
        for d in ["cat", "dog"]:
            os.makedirs(os.path.join(root, d), exist_ok=True)
    root = roots["train"] if splits else out
    p = lambda *a: os.path.join(root, *a)
    Image.fromarray(pattern(17, 23, 1, 1)[..., 0], "L").save(p("cat", "gray.png"))
    Image.fromarray(np.dstack([pattern(40, 30, 1, 2), (pattern(40, 30, 1, 3) // 2 + 60)]), "LA").save(p("cat", "gray_alpha.png"))
    Image.fromarray(pattern(300, 200, 3, 4), "RGB").save(p("cat", "rgb.png"))
    rgba = np.dstack([pattern(64, 64, 3, 5), np.tile(np.linspace(0, 255, 64).astype(np.uint8), (64, 1))])
    Image.fromarray(rgba, "RGBA").save(p("cat", "rgba.png"))
    Image.fromarray(pattern(50, 70, 3, 6), "RGB").quantize(16).save(p("cat", "palette.png"))
    pal = Image.fromarray(pattern(37, 29, 3, 7), "RGB").quantize(8)
    pal.save(p("cat", "palette_transparent.png"), transparency=3)
    write_png16(p("dog", "gray16.png"), (pattern(33, 45, 1, 8)[..., 0].astype(np.uint16) * 257 + 91))
    write_png16(p("dog", "rgb16.png"), pattern(45, 33, 3, 9).astype(np.uint16) * 251)
    write_png16(p("dog", "rgba16.png"), np.dstack([pattern(30, 26, 3, 15), pattern(30, 26, 1, 16)]).astype(np.uint16) * 257)
    Image.fromarray(pattern(120, 80, 3, 10), "RGB").save(p("dog", "baseline.jpg"), quality=90)
    Image.fromarray(pattern(100, 150, 3, 11), "RGB").save(p("dog", "progressive.JPG"), quality=85, progressive=True)
    Image.fromarray(pattern(64, 48, 1, 12)[..., 0], "L").save(p("dog", "gray.jpeg"), quality=92)
    if splits:
        Image.fromarray(pattern(40, 40, 3, 13), "RGB").save(os.path.join(roots["test"], "cat", "held.png"))
        Image.fromarray(pattern(41, 39, 3, 14), "RGB").save(os.path.join(roots["test"], "dog", "held.jpg"))
    meta = [
        {"file_name": "cat/rgb.png", "text": "Eine Katze, die „schnurrt“ 🐈"},
        {"file_name": "dog/baseline.jpg", "text": "犬が走る", "label": "cat"},
        {"file_name": "cat/gray.png", "text": "a gray cat"},
    ]
    lines = [json.dumps(m, ensure_ascii=False) for m in meta]
    if bad == "json":
        lines.append('{"file_name": "cat/gray.png", "text": ')
    elif bad == "missing":
        lines.append(json.dumps({"file_name": "cat/nowhere.png", "text": "gone"}))
    elif bad == "caption":
        lines.append(json.dumps({"file_name": "dog/gray.jpeg", "text": 42}))
    with open(os.path.join(root, "metadata.jsonl"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    if bad == "truncated":
        data = open(p("cat", "rgb.png"), "rb").read()
        open(p("cat", "truncated.png"), "wb").write(data[: len(data) // 2])
    elif bad == "truncated-jpeg":
        data = open(p("dog", "baseline.jpg"), "rb").read()
        open(p("dog", "cut.jpg"), "wb").write(data[: len(data) // 3])
    elif bad == "not-image":
        open(p("dog", "notes.png"), "w").write("not an image at all\n")
    elif bad == "dangling":   # a link to nothing: listed, but cannot be read (root reads any mode bits)
        os.symlink(p("dog", "nowhere.png"), p("dog", "dangling.png"))


if __name__ == "__main__":
    a = argparse.ArgumentParser()
    a.add_argument("out")
    a.add_argument("--bad")
    a.add_argument("--splits", action="store_true")
    args = a.parse_args()
    make(args.out, args.bad, args.splits)
