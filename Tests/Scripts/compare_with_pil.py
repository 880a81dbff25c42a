"""Prints, as JSON, the largest difference per file between a prepared dataset's
pixels and Pillow's result for the same source file: alpha composited over the
background, converted to L or RGB, the shorter side resized with the same filter,
centre-cropped as torchvision's Resize + CenterCrop do.

    python3 compare_with_pil.py DATASET.h5 FOLDER
"""
import json, sys
import h5py
import numpy as np
from PIL import Image

FILTERS = {"box": Image.BOX, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "lanczos": Image.LANCZOS}


def reference(path, R, C, bg, resample):
    im = Image.open(path)
    im.load()
    if im.mode in ("I;16", "I;16B", "I"):   # 16-bit gray: Pillow keeps 16 bits; scale to 8 as libpng does
        a = np.asarray(im).astype(np.uint32)
        im = Image.fromarray(((a * 255 + 32767) // 65535).astype(np.uint8), "L")
    target = "RGB" if C == 3 else "L"
    if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
        a = np.asarray(im.convert(target + "A")).astype(np.int64)
        back = np.array(bg if C == 3 else [(bg[0] * 19595 + bg[1] * 38470 + bg[2] * 7471 + 0x8000) >> 16])
        col, al = a[..., :C], a[..., C:C + 1]
        out = ((col * al + back * (255 - al) + 127) // 255).astype(np.uint8)
        im = Image.fromarray(out[..., 0] if C == 1 else out, target)
    else:
        im = im.convert(target)
    w, h = im.size
    short, long = min(w, h), max(w, h)
    new_long = int(R * long / short)
    nw, nh = (R, new_long) if w <= h else (new_long, R)
    if (nw, nh) != (w, h):
        im = im.resize((nw, nh), resample)
    top, left = int(round((nh - R) / 2.0)), int(round((nw - R) / 2.0))
    arr = np.asarray(im.crop((left, top, left + R, top + R)))
    return arr[None] if C == 1 else arr.transpose(2, 0, 1)


def main(dataset, folder):
    f = h5py.File(dataset, "r")
    R, C = int(f.attrs["resolution"]), int(f.attrs["channels"])
    bg = [int(v) for v in f.attrs["background"].split(",")]
    resample = FILTERS[f.attrs["resize_filter"]]
    result = {}
    for split in ("train", "test"):
        images, names = f[split + "/images"], f[split + "/file_name"].asstr()[:]
        for i, name in enumerate(names):
            ref = reference(folder + "/" + name, R, C, bg, resample).astype(int)
            result[name] = int(np.abs(images[i].astype(int) - ref).max())
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
