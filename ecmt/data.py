"""Data sets that exist offline, and a user's own data.

Every loader returns float32 images [N, C, H, W] and int64 labels [N].
Calibration always comes from a training split; evaluation from the test split.
"""
from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import DataError
from .tensorfile import read_tensors

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_MEAN, FASHION_MNIST_STD = 0.2860, 0.3530
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


@dataclass
class Split:
    images: torch.Tensor       # [N, C, H, W] float32, normalized
    labels: torch.Tensor       # [N] int64

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, n: int | None) -> "Split":
        return self if n is None or n >= len(self) else Split(self.images[:n], self.labels[:n])

    def sample(self, n: int, seed: int = 0) -> torch.Tensor:
        """n images in a fixed random order (the calibration set every command
        and benchmark draws from a training split)."""
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:n]
        return self.images[order]

    def batches(self, batch_size: int):
        for i in range(0, len(self), batch_size):
            yield self.images[i:i + batch_size], self.labels[i:i + batch_size]


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (optionally gzipped): big-endian header, then uint8 data."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as err:
        raise DataError(f"{path}: cannot read IDX file ({err})") from None
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise DataError(f"{path}: not an IDX file of unsigned bytes")
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DataError(f"{path}: truncated IDX file ({body.size} of {int(np.prod(dims))} bytes)")
    return body.reshape(dims)


def fashion_mnist(split: str, root: str | os.PathLike | None = None) -> Split:
    """Fashion-MNIST from the IDX files of Debian's dataset-fashion-mnist."""
    root = Path(root or os.environ.get("ECMT_FASHION_MNIST", FASHION_MNIST_DIR))
    prefix = {"train": "train", "test": "t10k"}[split]
    files = [root / f"{prefix}-{kind}-idx{n}-ubyte{ext}" for kind, n in (("images", 3), ("labels", 1))
             for ext in (".gz",)]
    for i, f in enumerate(files):
        if not f.exists() and f.with_suffix("").exists():
            files[i] = f.with_suffix("")
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        raise DataError(f"Fashion-MNIST not found: {missing[0]} is missing",
                        hint="install it with 'sudo apt-get install dataset-fashion-mnist', or point "
                             "--data-root / ECMT_FASHION_MNIST at a folder with the IDX files")
    images = torch.from_numpy(read_idx(files[0]).copy()).float().div_(255.0)
    labels = torch.from_numpy(read_idx(files[1]).astype(np.int64))
    if images.dim() != 3 or len(images) != len(labels):
        raise DataError(f"{root}: Fashion-MNIST images {list(images.shape)} and labels "
                        f"{list(labels.shape)} do not match")
    images = (images.unsqueeze(1) - FASHION_MNIST_MEAN) / FASHION_MNIST_STD
    return Split(images, labels)


def digits(split: str, test_fraction: float = 0.25, seed: int = 0) -> Split:
    """scikit-learn's UCI digits (8x8, 1,797 images), split reproducibly."""
    from sklearn.datasets import load_digits
    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0).unsqueeze(1)
    y = torch.from_numpy(d.target.astype(np.int64))
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_test = int(len(y) * test_fraction)
    idx = order[:n_test] if split == "test" else order[n_test:]
    return Split((x[idx] - 0.5) / 0.5, y[idx])


def tensor_file(path: str | os.PathLike) -> Split:
    """A user's data in one file: safetensors, or a torch file read with
    weights_only=True, holding 'images' [N, C, H, W] and 'labels' [N]."""
    path = Path(path)
    content = read_tensors(path, "data file", DataError,
                           hint="save a dict {'images': tensor, 'labels': tensor} with torch.save or safetensors")
    if not isinstance(content, dict) or "images" not in content or "labels" not in content:
        raise DataError(f"{path}: expected a dict with 'images' and 'labels' tensors")
    if not all(isinstance(content[k], torch.Tensor) for k in ("images", "labels")):
        raise DataError(f"{path}: 'images' and 'labels' must be tensors")
    images, labels = content["images"].float(), content["labels"].long()
    if images.dim() != 4 or labels.dim() != 1 or len(images) != len(labels):
        raise DataError(f"{path}: 'images' must be [N, C, H, W] and 'labels' [N]; got "
                        f"{list(images.shape)} and {list(labels.shape)}")
    if len(images) == 0:
        raise DataError(f"{path}: holds no images")
    bad = ~torch.isfinite(images)
    if bool(bad.any()):
        first = int(bad.flatten(1).any(1).nonzero()[0])
        raise DataError(f"{path}: {int(bad.sum())} of {images.numel()} image values are NaN or infinite "
                        f"(the first in image {first})", hint="clean the data; ecmt does not guess values")
    return Split(images, labels)


def check_shape(split: Split, expected, what: str) -> None:
    """Refuse images of another shape than the model takes, before any work."""
    given = tuple(split.images.shape[1:])
    if given != tuple(expected):
        raise DataError(f"{what}: the images are {list(given)} (channels, height, width) but the model "
                        f"takes {list(expected)}",
                        hint="use data with the model's channels and image size")


def image_folder(path: str | os.PathLike, size: int | None = None, grey: bool = False) -> Split:
    """A folder with one sub-folder per class (the ImageFolder layout), images
    scaled to [0, 1] and normalized to mean 0.5 / std 0.5 per channel."""
    from PIL import Image
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{root}: no such image folder")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"{root}: expected one sub-folder per class")
    images, labels = [], []
    for label, cls in enumerate(classes):
        for f in sorted((root / cls).iterdir()):
            if f.suffix.lower() not in (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"):
                continue
            try:
                img = Image.open(f).convert("L" if grey else "RGB")
                if size:
                    img = img.resize((size, size))
            except (OSError, ValueError, Image.DecompressionBombError) as err:   # decoding is lazy
                raise DataError(f"{f}: cannot read the image ({type(err).__name__}: {err})",
                                hint="remove or replace the file") from None
            arr = np.asarray(img, dtype=np.float32) / 255.0
            images.append(torch.from_numpy(arr).reshape(arr.shape[0], arr.shape[1], -1).permute(2, 0, 1))
            labels.append(label)
    if not images:
        raise DataError(f"{root}: no images found")
    if len({tuple(i.shape) for i in images}) > 1:
        raise DataError(f"{root}: images have different sizes; pass a size to resize them")
    return Split((torch.stack(images) - 0.5) / 0.5, torch.tensor(labels))


def load(name: str, split: str, root: str | None = None) -> Split:
    """By name: 'fashion-mnist', 'digits', a tensor file, or an image folder."""
    if split not in ("train", "test"):
        raise DataError(f"unknown split {split!r} (train or test)")
    if name in ("fashion-mnist", "fashion_mnist", "fmnist"):
        return fashion_mnist(split, root)
    if name == "digits":
        return digits(split)
    path = Path(name)
    if path.is_dir():
        return image_folder(path / split if (path / split).is_dir() else path)
    if path.suffix in (".pt", ".pth", ".safetensors"):
        return tensor_file(path)
    raise DataError(f"unknown data set {name!r}",
                    hint="use fashion-mnist, digits, an image folder (class sub-folders, optionally "
                         "under train/ and test/), or a .pt / .safetensors file with images and labels")
