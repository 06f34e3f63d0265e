"""Stand-ins for the paper profile's data in the exact real formats (issue 16): the `paper_fixture` profile.

Nothing real can be downloaded on a CI machine, so this writes what a user would have after following
CoOp's DATASETS.md, img2dataset and open_clip, with tiny images and random weights:

* ``coop/``: all 11 datasets and the 4 ImageNet variants in CoOp's folder layouts (ImageNet's wnid folders
  and ``classnames.txt`` with all 1,000 classes, FGVC-Aircraft's own txt files, Caltech's
  ``101_ObjectCategories``, Stanford Cars' ``cars_train/``, ImageNetV2's numbered folders, -Sketch/-A/-R's
  wnid folders, the ``split_zhou_*.json`` files of the others). Split lists are written in a shuffled order,
  as the real files are not sorted by label.
* ``cc3m/``: image-caption pairs as img2dataset's webdataset output: ``00000.tar`` (``.jpg``, ``.txt``,
  ``.json`` per sample), ``00000.parquet`` (one row per URL, failed downloads included) and
  ``00000_stats.json``.
* ``weights/``: random ViT-B/16 weights as an open_clip checkpoint (the ``backbone.checkpoint`` route; the
  Hugging Face cache route is tested in tests/test_paper_backbone.py).

The layouts are written from DATASETS.md, not from :data:`gramlib.data.coop.COOP_DATASETS`, so a wrong
registry entry fails to load them. Run: ``gramlib paper-fixture --root data/paper_fixture``.
"""

from __future__ import annotations

import io
import json
import random
import tarfile
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from gramlib.io import atomic_path, write_json, write_text

#: (dataset folder, image folder, split file, class names as the distributed split files spell them)
SPLIT_ZHOU = {
    "caltech101": ("caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json",
                   {"airplanes": "airplane", "Faces": "face", "accordion": "accordion", "anchor": "anchor"}),
    "oxford_pets": ("oxford_pets", "images", "split_zhou_OxfordPets.json",
                    {"Abyssinian": "abyssinian", "american_bulldog": "american_bulldog", "Bengal": "bengal",
                     "beagle": "beagle"}),
    "stanford_cars": ("stanford_cars", "", "split_zhou_StanfordCars.json",
                      {"a": "2012 Tesla Model S", "b": "2012 BMW M3 coupe", "c": "2007 Ford Mustang Convertible",
                       "d": "1993 Volvo 240 Sedan"}),
    "oxford_flowers": ("oxford_flowers", "jpg", "split_zhou_OxfordFlowers.json",
                       {"1": "pink primrose", "2": "hard-leaved pocket orchid", "3": "canterbury bells",
                        "4": "sweet pea"}),
    "food101": ("food-101", "images", "split_zhou_Food101.json",
                {"apple_pie": "apple_pie", "baby_back_ribs": "baby_back_ribs", "baklava": "baklava",
                 "beef_carpaccio": "beef_carpaccio"}),
    "sun397": ("sun397", "SUN397", "split_zhou_SUN397.json",
               {"a/abbey": "abbey", "a/airplane_cabin": "airplane_cabin", "b/bakery/shop": "bakery shop",
                "c/canyon": "canyon"}),
    "dtd": ("dtd", "images", "split_zhou_DescribableTextures.json",
            {"banded": "banded", "blotchy": "blotchy", "braided": "braided", "bubbly": "bubbly"}),
    "eurosat": ("eurosat", "2750", "split_zhou_EuroSAT.json",
                {"AnnualCrop": "Annual Crop Land", "Forest": "Forest", "Highway": "Highway or Road",
                 "SeaLake": "Sea or Lake"}),
    "ucf101": ("ucf101", "UCF-101-midframes", "split_zhou_UCF101.json",
               {"Apply_Eye_Makeup": "Apply_Eye_Makeup", "Archery": "Archery", "Basketball": "Basketball",
                "Biking": "Biking"}),
}
FGVC_VARIANTS = ["707-320", "727-200", "A300B4", "Cessna 172"]
CAPTION_TOPICS = {
    "dog": ["a dog running on the beach", "a small dog sleeping on a sofa", "portrait of a dog in the park"],
    "car": ["a red car parked on the street", "an old car on a country road", "the car drives through the city"],
    "flower": ["a pink flower in the garden", "close up of a flower with dew", "a field of yellow flower blossoms"],
    "food": ["a plate of food on a wooden table", "delicious food served at the restaurant", "homemade food for dinner"],
    "mountain": ["snow on the mountain at sunrise", "hikers climbing a mountain trail", "a lake below the mountain"],
    "city": ["the city skyline at night", "people walking in the city centre", "a busy street in the city"],
}


@dataclass(frozen=True)
class FixtureSizes:
    """Images per class (train, val, test) of the small datasets. ImageNet has all 1,000 class folders in
    train and val (CoOp derives the classes from train's folders, empty ones included), so its text side is
    the real one; only a few folders hold images: encoding them through ViT-B/16 on CPU is what CI waits for."""

    train: int = 4
    val: int = 2
    test: int = 2
    imagenet_test_classes: int = 10   # val images in this many of ImageNet's 1,000 class folders
    imagenet_train_classes: int = 50  # training images in this many (evenly spaced) of its train folders
    imagenet_rich_train: int = 4      # training images in every other one of those (the others have one):
                                      # supervised meta-training draws K + Q images per class
    variant_test_classes: int = 10
    cc3m_pairs: int = 150
    cc3m_failed: int = 6              # parquet rows of failed downloads (in no tar)
    shard_size: int = 60
    image_size: int = 32


def _jpeg(rng: random.Random, colour: tuple[int, int, int], size: int) -> bytes:
    """A small JPEG: the class colour plus noise, so classes are separable but images differ."""
    img = Image.new("RGB", (size, size), colour)
    px = img.load()
    for _ in range(size * 2):
        x, y = rng.randrange(size), rng.randrange(size)
        px[x, y] = tuple(min(255, max(0, c + rng.randint(-60, 60))) for c in colour)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def _colour(label: int) -> tuple[int, int, int]:
    r = random.Random(label * 7919)
    return (r.randrange(256), r.randrange(256), r.randrange(256))


def _write_image(path: Path, rng: random.Random, label: int, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_jpeg(rng, _colour(label), size))


def _split_zhou(coop: Path, key: str, sizes: FixtureSizes, rng: random.Random) -> None:
    folder, image_dir, split_file, classes = SPLIT_ZHOU[key]
    ds = coop / folder
    img_root = ds / image_dir if image_dir else ds
    splits: dict[str, list] = {"train": [], "val": [], "test": []}
    counter = 0
    for label, (sub, cname) in enumerate(classes.items()):
        for split, n in (("train", sizes.train), ("val", sizes.val), ("test", sizes.test)):
            for _ in range(n):
                counter += 1
                if key == "stanford_cars":
                    rel = f"cars_{'test' if split == 'test' else 'train'}/{counter:05d}.jpg"
                elif key == "oxford_pets":
                    rel = f"{sub}_{counter}.jpg"
                elif key == "oxford_flowers":
                    rel = f"image_{counter:05d}.jpg"
                else:
                    rel = f"{sub}/{sub.split('/')[-1]}_{counter:04d}.jpg"
                _write_image(img_root / rel, rng, label + 11 * len(key), sizes.image_size)
                splits[split].append([rel, label, cname])
    for items in splits.values():
        rng.shuffle(items)  # the distributed files are not sorted by label
    if key == "stanford_cars":
        (ds / "devkit").mkdir(parents=True, exist_ok=True)
        (ds / "devkit" / "README.txt").write_text("cars_meta.mat, cars_train_annos.mat (not read: CoOp's split is)\n")
    if key == "oxford_pets":
        (ds / "annotations").mkdir(parents=True, exist_ok=True)
        (ds / "annotations" / "trainval.txt").write_text("")
    if key == "oxford_flowers":
        (ds / "cat_to_name.json").write_text(json.dumps({k: v for k, v in classes.items()}))
    write_json(ds / split_file, splits, indent=None)


def _fgvc(coop: Path, sizes: FixtureSizes, rng: random.Random) -> None:
    ds = coop / "fgvc_aircraft"
    write_text(ds / "variants.txt", "".join(f"{v}\n" for v in FGVC_VARIANTS))
    counter = 1000000
    for split, n in (("train", sizes.train), ("val", sizes.val), ("test", sizes.test)):
        lines = []
        for label, v in enumerate(FGVC_VARIANTS):
            for _ in range(n):
                counter += 1
                _write_image(ds / "images" / f"{counter}.jpg", rng, label + 50, sizes.image_size)
                lines.append(f"{counter} {v}\n")
        rng.shuffle(lines)
        write_text(ds / f"images_variant_{split}.txt", "".join(lines))


def imagenet_classes() -> list[tuple[str, str]]:
    """(wnid, class name) of ImageNet's 1,000 classes in label order. The names are CLIP's (open_clip's
    ``IMAGENET_CLASSNAMES``, which CoOp's classnames.txt also holds); the folder ids are stand-ins in the
    same sorted order as the real wnids."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    return [(f"n{10000000 + i:08d}", name) for i, name in enumerate(IMAGENET_CLASSNAMES)]


def _imagenet(coop: Path, sizes: FixtureSizes, rng: random.Random) -> None:
    classes = imagenet_classes()
    listing = "".join(f"{w} {c}\n" for w, c in classes)
    ds = coop / "imagenet"
    write_text(ds / "classnames.txt", listing)
    step = len(classes) // sizes.imagenet_test_classes
    step_train = len(classes) // sizes.imagenet_train_classes
    for label, (wnid, _) in enumerate(classes):
        (ds / "images" / "train" / wnid).mkdir(parents=True, exist_ok=True)
        if label % step_train == 0:
            for i in range(sizes.imagenet_rich_train if label % (2 * step_train) == 0 else 1):
                _write_image(ds / "images" / "train" / wnid / f"{wnid}_{i}.JPEG", rng, label, sizes.image_size)
        (ds / "images" / "val" / wnid).mkdir(parents=True, exist_ok=True)
        if label % step == 0:
            _write_image(ds / "images" / "val" / wnid / f"ILSVRC2012_val_{label:08d}.JPEG", rng, label, sizes.image_size)
    # the variants: DATASETS.md asks to copy classnames.txt into each folder
    v2 = coop / "imagenetv2"
    write_text(v2 / "classnames.txt", listing)
    sk = coop / "imagenet-sketch"
    write_text(sk / "classnames.txt", listing)
    step_v = len(classes) // sizes.variant_test_classes
    for label, (wnid, _) in enumerate(classes):
        (v2 / "imagenetv2-matched-frequency-format-val" / str(label)).mkdir(parents=True, exist_ok=True)
        (sk / "images" / wnid).mkdir(parents=True, exist_ok=True)
        if label % step_v == 0:
            _write_image(v2 / "imagenetv2-matched-frequency-format-val" / str(label) / f"{label}a.jpeg", rng, label,
                         sizes.image_size)
            _write_image(sk / "images" / wnid / f"sketch_{label}.JPEG", rng, label, sizes.image_size)
    for folder, sub in (("imagenet-adversarial", "imagenet-a"), ("imagenet-rendition", "imagenet-r")):
        root = coop / folder
        write_text(root / "classnames.txt", listing)
        subset = classes[::5]  # 200 classes, as -A and -R
        for i, (wnid, _) in enumerate(subset):
            (root / sub / wnid).mkdir(parents=True, exist_ok=True)
            if i % (len(subset) // sizes.variant_test_classes) == 0:
                _write_image(root / sub / wnid / f"{sub}_{i}.jpg", rng, classes.index((wnid, _)), sizes.image_size)
        write_text(root / sub / "README.txt", "class list: see classnames.txt\n")


def _cc3m(out: Path, sizes: FixtureSizes, rng: random.Random) -> None:
    """img2dataset's webdataset output (``--output_format webdataset --save_additional_columns``)."""
    import pandas as pd

    topics = list(CAPTION_TOPICS)
    n_shards = -(-sizes.cc3m_pairs // sizes.shard_size)
    failed = set(rng.sample(range(sizes.cc3m_pairs + sizes.cc3m_failed), sizes.cc3m_failed))
    per_shard = -(-(sizes.cc3m_pairs + sizes.cc3m_failed) // n_shards)
    out.mkdir(parents=True, exist_ok=True)
    for shard in range(n_shards):
        rows, members = [], []
        for j in range(per_shard):
            idx = shard * per_shard + j
            if idx >= sizes.cc3m_pairs + sizes.cc3m_failed:
                break
            key = f"{shard:05d}{j:04d}"
            topic = topics[idx % len(topics)]
            caption = rng.choice(CAPTION_TOPICS[topic])
            url = f"https://example.invalid/cc3m/{idx}.jpg"
            if idx in failed:
                rows.append({"url": url, "caption": caption, "key": key, "status": "failed_to_download",
                             "error_message": "HTTP Error 404: Not Found", "width": None, "height": None})
                continue
            img = _jpeg(rng, _colour(idx % len(topics) * 31), sizes.image_size)
            meta = {"url": url, "caption": caption, "key": key, "status": "success", "error_message": None,
                    "width": sizes.image_size, "height": sizes.image_size,
                    "original_width": sizes.image_size, "original_height": sizes.image_size}
            members += [(f"{key}.jpg", img), (f"{key}.txt", caption.encode()), (f"{key}.json", json.dumps(meta).encode())]
            rows.append({k: meta[k] for k in ("url", "caption", "key", "status", "error_message", "width", "height")})
        with atomic_path(out / f"{shard:05d}.tar") as tmp, tarfile.open(tmp, "w") as tf:
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
        with atomic_path(out / f"{shard:05d}.parquet") as tmp:
            pd.DataFrame(rows).to_parquet(tmp, index=False)
        ok = sum(r["status"] == "success" for r in rows)
        write_json(out / f"{shard:05d}_stats.json",
                   {"count": len(rows), "successes": ok, "failed_to_download": len(rows) - ok, "failed_to_resize": 0,
                    "duration": 1.0, "status_dict": {"success": ok, "HTTP Error 404: Not Found": len(rows) - ok}})


def write_weights(path: Path, arch: str = "ViT-B-16", seed: int = 0) -> Path:
    """Random ``arch`` weights as an open_clip checkpoint (fp16 state dict, the size of the real file)."""
    import open_clip
    import torch

    torch.manual_seed(seed)
    model = open_clip.create_model(arch, pretrained=None, force_quick_gelu=True)
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def build_paper_fixture(root: str | Path, sizes: FixtureSizes = FixtureSizes(), seed: int = 0,
                        weights: bool = True) -> dict:
    """Write ``<root>/coop``, ``<root>/cc3m`` and ``<root>/weights/ViT-B-16-random.pt``; returns what was written."""
    root = Path(root)
    rng = random.Random(seed)
    coop = root / "coop"
    for key in SPLIT_ZHOU:
        _split_zhou(coop, key, sizes, rng)
    _fgvc(coop, sizes, rng)
    _imagenet(coop, sizes, rng)
    _cc3m(root / "cc3m", sizes, rng)
    out = {"coop": str(coop), "cc3m": str(root / "cc3m")}
    if weights:
        out["weights"] = str(write_weights(root / "weights" / "ViT-B-16-random.pt"))
    return out
