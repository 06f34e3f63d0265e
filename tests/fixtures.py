"""Small on-disk fixtures built inside ``tmp_path``: never downloaded, a few KB each.

* :func:`make_coop_dataset`: a CoOp-layout dataset (``images/<class>/*.jpg`` + split_zhou JSON);
* :func:`make_imagenet_style`: ``imagenet/images/{train,val}/<wnid>/`` + ``classnames.txt``;
* :func:`make_shards`: img2dataset-style webdataset shards of tiny JPEGs with captions.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Sequence

from PIL import Image

from gramlib.data.cc3m import ShardSample, write_shards
from gramlib.data.coop import Datum, write_split

COLOURS = [(220, 30, 30), (30, 200, 30), (30, 30, 220), (200, 200, 30), (200, 30, 200),
           (30, 200, 200), (120, 120, 120), (250, 150, 50)]


def jpeg_bytes(size: tuple[int, int] = (8, 6), colour: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def write_image(path: Path, size: tuple[int, int] = (8, 6), colour: tuple[int, int, int] = (200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(jpeg_bytes(size, colour))
    return path


def make_coop_dataset(root: Path, name: str = "Mini", classnames: Sequence[str] = ("cat", "dog", "red_car"),
                      counts: tuple[int, int, int] = (6, 3, 2), image_dir: str = "images") -> Path:
    """``root/<name>/images/<class>/<split>_<i>.jpg`` + ``root/<name>/split_zhou_<name>.json``.

    ``counts`` = images per class in (train, val, test). Returns the dataset folder.
    """
    ds_dir = root / name
    img_root = ds_dir / image_dir
    splits: dict[str, list[Datum]] = {"train": [], "val": [], "test": []}
    for label, cname in enumerate(classnames):
        for split, n in zip(splits, counts):
            for i in range(n):
                p = write_image(img_root / cname / f"{split}_{i:03d}.jpg",
                                colour=COLOURS[label % len(COLOURS)])
                splits[split].append(Datum(p, label, cname))
    write_split(ds_dir / f"split_zhou_{name}.json", splits["train"], splits["val"], splits["test"],
                image_dir=img_root)
    return ds_dir


IMAGENET_CLASSES = {"n01440764": "tench", "n01443537": "goldfish", "n01484850": "great_white shark",
                    "n01491361": "tiger shark"}


def make_imagenet_style(root: Path, classes: dict[str, str] = IMAGENET_CLASSES, per_class: int = 2) -> Path:
    """ImageNet (train/val folders), ImageNetV2 (int folders), -Sketch and -A (200-class-style subset)."""
    ds = root / "imagenet"
    ds.mkdir(parents=True, exist_ok=True)
    (ds / "classnames.txt").write_text("".join(f"{w} {c}\n" for w, c in classes.items()))
    wnids = list(classes)
    for split in ("train", "val"):
        for w in wnids:
            for i in range(per_class):
                write_image(ds / "images" / split / w / f"{w}_{i}.JPEG")
    for label in range(len(wnids)):
        write_image(root / "imagenetv2" / "imagenetv2-matched-frequency-format-val" / str(label) / "a.jpeg")
    for w in wnids:
        write_image(root / "imagenet-sketch" / "images" / w / "s.JPEG")
    for w in wnids[1:3]:  # a subset of classes, as ImageNet-A's 200
        write_image(root / "imagenet-adversarial" / "imagenet-a" / w / "x.jpg")
    (root / "imagenet-adversarial" / "imagenet-a" / "README.txt").write_text("readme")
    return ds


def sample_list(n: int, sizes: Sequence[tuple[int, int]] = ((8, 6), (5, 9), (12, 4))) -> list[ShardSample]:
    return [ShardSample(None, jpeg_bytes(sizes[i % len(sizes)], COLOURS[i % len(COLOURS)]),
                        f"a photo of thing number {i}", {"url": f"http://example.invalid/{i}.jpg"})
            for i in range(n)]


def make_shards(out_dir: Path, n: int = 7, shard_size: int = 3) -> list[Path]:
    return write_shards(sample_list(n), out_dir, shard_size)


def raw_tar(path: Path, members: Sequence[tuple[str, bytes]]) -> Path:
    """A tar with exactly ``members`` (name, bytes): for broken-shard cases the writer refuses."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path
