"""CoOp's ``DATA/`` layout: one reader for the paper's 11 datasets, the ImageNet variants and the
generated mini datasets.

CoOp (Dassl) copies a reader and a few-shot caching block into every dataset file; here the layouts
are *data* (a :class:`DatasetSpec` per dataset) and one small set of pure functions reads them, so
the mini world, written in the same layout, exercises exactly the code the paper profile runs.

Conventions kept from CoOp/CoCoOp (see DESIGN.md, "Conventions worth keeping"):

* ``split_zhou_<Name>.json``: keys ``train``/``val``/``test``, items
  ``[relative_image_path, int_label, classname]`` relative to the dataset's image folder.
* Class names: dataset-specific renaming tables (EuroSAT, Caltech101), then ``_`` -> space.
* Few-shot: Dassl's rule, so that seed s and K shots pick CoOp's images: K per class for train, then
  ``min(K, 4)`` per class for val from the *same* random stream (``random.Random(seed)``, as CoOp seeds
  Python's global ``random`` once), classes in order of first appearance in the split list, a class
  with fewer than K items kept whole (with a warning); cached per (K, seed) as JSON.
* Base/new: labels sorted, ``m = ceil(n / 2)``, base = first m, new = rest, relabelled from 0;
  few-shot sampling happens *before* the split.

ImageNet's images are read in the order the file system lists them (CoOp's ``listdir_nohidden``
without sorting), its class folders sorted, so its shots equal CoOp's on the same disk; every other
folder listing (the test-only variants, ImageNetV2) is sorted, which changes no result.

Deliberate differences from CoOp: the few-shot cache is JSON with relative paths, the sampling rule
and a fingerprint of its source split, not a pickle of absolute paths; a truncated class is logged.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from gramlib.io import read_json, stable_hash, write_json

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


# --------------------------------------------------------------------------------------------
# Records


@dataclass(frozen=True)
class Datum:
    """One labelled image; ``impath`` is absolute (image folder joined with the split's path)."""

    impath: Path
    label: int
    classname: str
    domain: str | None = None


@dataclass(frozen=True)
class DatasetSpec:
    """Where a dataset lives under the data root and which reader understands it.

    ``loader`` is one of ``split_zhou`` (a split JSON), ``fgvc_aircraft`` (the FGVC text files),
    ``imagenet`` (``images/{train,val}/<wnid>/`` + ``classnames.txt``), ``imagenet_folders``
    (one test set of ``<wnid>/`` folders: Sketch, -A, -R) and ``imagenetv2`` (``<int label>/``).
    Paths are relative: ``dataset_dir`` to the root, ``image_dir``/``split_file`` to ``dataset_dir``
    (``image_dir=""`` means the dataset folder itself, as for Stanford Cars).
    """

    name: str
    dataset_dir: str
    image_dir: str
    split_file: str | None
    loader: str = "split_zhou"
    classnames_file: str | None = None
    rename: Mapping[str, str] = field(default_factory=dict)
    ignore: tuple[str, ...] = ()
    fewshot_val: bool = True


@dataclass
class CoopDataset:
    """A loaded dataset: three splits plus the label -> class-name map shared by all of them."""

    name: str
    image_dir: Path
    train: list[Datum]
    val: list[Datum]
    test: list[Datum]
    classnames: list[str]
    lab2cname: dict[int, str]
    fewshot_val: bool = True
    dataset_dir: Path | None = None  # where CoOp keeps split_fewshot/ (None: a dataset built in memory)

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def split(self, which: str) -> list[Datum]:
        if which not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {which!r}")
        return getattr(self, which)


LOADERS = ("split_zhou", "fgvc_aircraft", "imagenet", "imagenet_folders", "imagenetv2")

# --------------------------------------------------------------------------------------------
# Class-name rules

# CoOp datasets/eurosat.py NEW_CNAMES: used there when *creating* the split; the distributed
# split_zhou_EuroSAT.json already carries the new names. Applying the table again is idempotent
# (no new name is an old name other than the identical ones), so we apply it on read as well.
EUROSAT_NEW_CNAMES: dict[str, str] = {
    "AnnualCrop": "Annual Crop Land",
    "Forest": "Forest",
    "HerbaceousVegetation": "Herbaceous Vegetation Land",
    "Highway": "Highway or Road",
    "Industrial": "Industrial Buildings",
    "Pasture": "Pasture Land",
    "PermanentCrop": "Permanent Crop Land",
    "Residential": "Residential Buildings",
    "River": "River",
    "SeaLake": "Sea or Lake",
}

# CoOp datasets/caltech101.py NEW_CNAMES (it also ignores BACKGROUND_Google and Faces_easy, which
# only matters when creating a split). Same idempotence argument as for EuroSAT.
CALTECH101_NEW_CNAMES: dict[str, str] = {
    "airplanes": "airplane",
    "Faces": "face",
    "Leopards": "leopard",
    "Motorbikes": "motorbike",
}


def clean_classname(name: str, rename: Mapping[str, str] | None = None) -> str:
    """Apply a dataset's renaming table, then ``_`` -> space (CoOp does this before prompting)."""
    if rename:
        name = rename.get(name, name)
    return name.replace("_", " ").strip()


# --------------------------------------------------------------------------------------------
# Registry of the real CoOp layouts

COOP_DATASETS: dict[str, DatasetSpec] = {
    s.name: s
    for s in [
        DatasetSpec("Caltech101", "caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json",
                    rename=CALTECH101_NEW_CNAMES),
        DatasetSpec("OxfordPets", "oxford_pets", "images", "split_zhou_OxfordPets.json"),
        # Stanford Cars: CoOp reads the split relative to the dataset folder itself
        # (paths like "cars_train/00001.jpg").
        DatasetSpec("StanfordCars", "stanford_cars", "", "split_zhou_StanfordCars.json"),
        DatasetSpec("OxfordFlowers", "oxford_flowers", "jpg", "split_zhou_OxfordFlowers.json"),
        DatasetSpec("Food101", "food-101", "images", "split_zhou_Food101.json"),
        # FGVC Aircraft: the "data/" folder of fgvc-aircraft-2013b renamed to fgvc_aircraft/.
        DatasetSpec("FGVCAircraft", "fgvc_aircraft", "images", None, loader="fgvc_aircraft"),
        DatasetSpec("SUN397", "sun397", "SUN397", "split_zhou_SUN397.json"),
        DatasetSpec("DescribableTextures", "dtd", "images", "split_zhou_DescribableTextures.json"),
        DatasetSpec("EuroSAT", "eurosat", "2750", "split_zhou_EuroSAT.json", rename=EUROSAT_NEW_CNAMES),
        DatasetSpec("UCF101", "ucf101", "UCF-101-midframes", "split_zhou_UCF101.json"),
        # ImageNet: CoOp uses val as both validation and test and samples few shots for train
        # only (datasets/imagenet.py), hence fewshot_val=False.
        DatasetSpec("ImageNet", "imagenet", "images", None, loader="imagenet",
                    classnames_file="classnames.txt", fewshot_val=False),
        DatasetSpec("ImageNetV2", "imagenetv2", "imagenetv2-matched-frequency-format-val", None,
                    loader="imagenetv2", classnames_file="classnames.txt"),
        DatasetSpec("ImageNetSketch", "imagenet-sketch", "images", None, loader="imagenet_folders",
                    classnames_file="classnames.txt"),
        DatasetSpec("ImageNetA", "imagenet-adversarial", "imagenet-a", None, loader="imagenet_folders",
                    classnames_file="classnames.txt", ignore=("README.txt",)),
        DatasetSpec("ImageNetR", "imagenet-rendition", "imagenet-r", None, loader="imagenet_folders",
                    classnames_file="classnames.txt", ignore=("README.txt",)),
    ]
}

_ALIASES = {"dtd": "DescribableTextures", "fgvc": "FGVCAircraft", "aircraft": "FGVCAircraft",
            "flowers102": "OxfordFlowers", "imagenetadversarial": "ImageNetA",
            "imagenetrendition": "ImageNetR", "cars": "StanfordCars", "pets": "OxfordPets"}


def _norm(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def get_spec(name: str, registry: Mapping[str, DatasetSpec] | None = None) -> DatasetSpec | None:
    """Look a dataset up by name, forgiving case, ``-``/``_`` and a few common aliases."""
    registry = COOP_DATASETS if registry is None else registry
    if name in registry:
        return registry[name]
    by_norm = {_norm(k): v for k, v in registry.items()}
    key = _norm(name)
    if key in by_norm:
        return by_norm[key]
    alias = _ALIASES.get(key)
    return registry.get(alias) if alias else None


def split_zhou_spec(name: str, dataset_dir: str | None = None, image_dir: str = "images",
                    split_file: str | None = None) -> DatasetSpec:
    """The generic layout of a generated dataset: ``<root>/<name>/images`` + ``split_zhou_<name>.json``."""
    return DatasetSpec(name=name, dataset_dir=dataset_dir or name, image_dir=image_dir,
                       split_file=split_file or f"split_zhou_{name}.json")


def register_split_zhou(name: str, dataset_dir: str | None = None, image_dir: str = "images",
                        split_file: str | None = None,
                        registry: dict[str, DatasetSpec] | None = None) -> DatasetSpec:
    """Register a split_zhou dataset (mini world) in ``registry`` (default: ``COOP_DATASETS``).

    Re-registering the same spec is a no-op; a different spec under an existing name raises, so a
    mini dataset can never silently shadow one of the paper's datasets.
    """
    registry = COOP_DATASETS if registry is None else registry
    spec = split_zhou_spec(name, dataset_dir, image_dir, split_file)
    if name in registry and registry[name] != spec:
        raise ValueError(f"dataset {name!r} is already registered with a different layout: {registry[name]}")
    registry[name] = spec
    return spec


# --------------------------------------------------------------------------------------------
# split_zhou JSON


def _safe_relpath(rel: Any, where: str) -> str:
    """Refuse split paths that are absolute or climb out of the image folder (lexically, so a
    symlinked DATA/ folder is fine)."""
    if not isinstance(rel, str) or not rel:
        raise ValueError(f"{where}: image path must be a non-empty string, got {rel!r}")
    if os.path.isabs(rel) or rel.startswith(("/", "\\")):
        raise ValueError(f"{where}: image path {rel!r} is absolute; split paths must be relative "
                         "to the image folder")
    norm = os.path.normpath(rel)
    if norm == ".." or norm.startswith(".." + os.sep) or norm == ".":
        raise ValueError(f"{where}: image path {rel!r} escapes the image folder")
    return rel


def read_split(split_path: str | os.PathLike, image_dir: str | os.PathLike, *,
               rename: Mapping[str, str] | None = None, verify: bool = False) -> dict[str, list[Datum]]:
    """Read a CoOp ``split_zhou`` JSON into ``{"train", "val", "test"}`` lists of :class:`Datum`.

    Every structural problem raises a ValueError naming the file and the offending item, because a
    silently skipped item would shift few-shot selections. ``verify=True`` also checks that every
    image exists (otherwise a missing image surfaces when it is loaded).
    """
    split_path = Path(split_path)
    image_dir = Path(image_dir)
    if not split_path.is_file():
        raise FileNotFoundError(f"split file not found: {split_path}")
    obj = read_json(split_path)
    if not isinstance(obj, dict):
        raise ValueError(f"{split_path}: expected a JSON object with keys {list(SPLITS)}, "
                         f"got {type(obj).__name__}")
    out: dict[str, list[Datum]] = {}
    for key in SPLITS:
        if key not in obj:
            raise ValueError(f"{split_path}: missing key {key!r} (expected keys {list(SPLITS)})")
        items = obj[key]
        if not isinstance(items, list):
            raise ValueError(f"{split_path}: {key!r} must be a list, got {type(items).__name__}")
        data = []
        for i, item in enumerate(items):
            where = f"{split_path}: {key}[{i}]"
            if not isinstance(item, list) or len(item) != 3:
                raise ValueError(f"{where}: expected [relative_image_path, int_label, classname], got {item!r}")
            rel, label, cname = item
            rel = _safe_relpath(rel, where)
            if isinstance(label, bool) or not isinstance(label, int):
                raise ValueError(f"{where}: label must be an int, got {label!r}")
            if label < 0:
                raise ValueError(f"{where}: label must be >= 0, got {label}")
            if not isinstance(cname, str) or not cname.strip():
                raise ValueError(f"{where}: classname must be a non-empty string, got {cname!r}")
            data.append(Datum(image_dir / rel, label, clean_classname(cname, rename)))
        out[key] = data
    if verify:
        verify_images([d for k in SPLITS for d in out[k]], source=split_path)
    return out


def write_split(split_path: str | os.PathLike, train: Iterable[Datum], val: Iterable[Datum],
                test: Iterable[Datum], image_dir: str | os.PathLike | None = None) -> Path:
    """Write a split_zhou JSON atomically (used by the mini-world generator).

    Paths are stored relative to ``image_dir`` (default: ``<split dir>/images``); a datum outside
    it raises rather than writing a split another machine could not read.
    """
    split_path = Path(split_path)
    base = Path(image_dir) if image_dir is not None else split_path.parent / "images"
    obj = {name: [to_item(d, base) for d in data] for name, data in zip(SPLITS, (train, val, test))}
    return write_json(split_path, obj, indent=None)


def to_item(d: Datum, image_dir: str | os.PathLike) -> list:
    """A datum as a split_zhou item ``[relative_path, label, classname]`` (POSIX separators)."""
    p, base = Path(d.impath), Path(image_dir)
    try:
        rel = p.relative_to(base).as_posix()
    except ValueError:
        rel = Path(os.path.relpath(p.absolute(), base.absolute())).as_posix()
    _safe_relpath(rel, f"datum {d.impath} (image folder {base})")
    return [rel, int(d.label), d.classname]


def verify_images(data: Iterable[Datum], source: str | os.PathLike = "") -> None:
    """Raise FileNotFoundError listing (up to 5 of) the images a split names but the disk lacks."""
    missing = [str(d.impath) for d in data if not Path(d.impath).is_file()]
    if missing:
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise FileNotFoundError(f"{source}: {len(missing)} listed image(s) missing, e.g. "
                                f"{', '.join(missing[:5])}{more}")


# --------------------------------------------------------------------------------------------
# Folder-based readers (ImageNet family, FGVC Aircraft)


def _listdir(path: Path, *, dirs: bool | None = None, sort: bool = True) -> list[str]:
    """Non-hidden entries (CoOp's ``listdir_nohidden``), sorted unless ``sort=False``."""
    if not path.is_dir():
        raise FileNotFoundError(f"folder not found: {path}")
    names = [n for n in os.listdir(path) if not n.startswith(".")]
    if sort:
        names.sort()
    if dirs is True:
        names = [n for n in names if (path / n).is_dir()]
    elif dirs is False:
        names = [n for n in names if (path / n).is_file()]
    return names


def read_classnames(path: str | os.PathLike) -> dict[str, str]:
    """ImageNet's ``classnames.txt``: lines ``"<wnid> <class name>"`` in label order."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"classnames file not found: {path}")
    out: dict[str, str] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.strip().split(" ", 1)
        if len(parts) != 2 or not parts[1].strip():
            raise ValueError(f"{path}:{lineno}: expected '<wnid> <class name>', got {line!r}")
        if parts[0] in out:
            raise ValueError(f"{path}:{lineno}: duplicate folder id {parts[0]!r}")
        out[parts[0]] = parts[1].strip()
    if not out:
        raise ValueError(f"{path}: no class names")
    return out


def _read_wnid_folders(split_dir: Path, classnames: Mapping[str, str], cn_file: Path,
                       ignore: Sequence[str] = (), *, sort_images: bool = True) -> tuple[list[Datum], dict[int, str]]:
    """Folders ``<wnid>/`` sorted, label = rank among the folders present (CoOp's rule: ImageNet-A
    and -R therefore get labels 0..199 in sorted-wnid order). ``sort_images=False`` keeps the file
    system's listing order inside each folder (CoOp's imagenet.py), which decides ImageNet's shots.
    Returns the items and label -> class name of every folder, an empty one included."""
    items: list[Datum] = []
    classes: dict[int, str] = {}
    folders = [f for f in _listdir(split_dir, dirs=True) if f not in ignore]
    if not folders:
        raise ValueError(f"{split_dir}: no class folders")
    for label, folder in enumerate(folders):
        if folder not in classnames:
            raise ValueError(f"{split_dir / folder}: folder {folder!r} has no entry in {cn_file}")
        cname = classes[label] = clean_classname(classnames[folder])
        for im in _listdir(split_dir / folder, dirs=False, sort=sort_images):
            items.append(Datum(split_dir / folder / im, label, cname))
    return items, classes


def _read_imagenetv2(image_dir: Path, classnames: Mapping[str, str]) -> list[Datum]:
    """ImageNetV2 folders are named by integer label; names come from classnames.txt order."""
    items: list[Datum] = []
    for label, wnid in enumerate(classnames):
        class_dir = image_dir / str(label)
        cname = clean_classname(classnames[wnid])
        for im in _listdir(class_dir, dirs=False):
            items.append(Datum(class_dir / im, label, cname))
    return items


def _read_fgvc(dataset_dir: Path, image_dir: Path) -> dict[str, list[Datum]]:
    """FGVC Aircraft (CoOp datasets/fgvc_aircraft.py): ``variants.txt`` gives the 100 class names in
    label order; ``images_variant_{train,val,test}.txt`` lines are ``"<image id> <variant>"``."""
    variants_file = dataset_dir / "variants.txt"
    if not variants_file.is_file():
        raise FileNotFoundError(f"FGVC Aircraft class list not found: {variants_file}")
    names = [ln.strip() for ln in variants_file.read_text(encoding="utf-8").splitlines() if ln.strip()]
    cname2lab = {c: i for i, c in enumerate(names)}
    out = {}
    for split in SPLITS:
        f = dataset_dir / f"images_variant_{split}.txt"
        if not f.is_file():
            raise FileNotFoundError(f"FGVC Aircraft split file not found: {f}")
        data = []
        for lineno, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
            parts = line.strip().split(" ")
            if not line.strip():
                continue
            if len(parts) < 2:
                raise ValueError(f"{f}:{lineno}: expected '<image id> <variant>', got {line!r}")
            cname = " ".join(parts[1:])
            if cname not in cname2lab:
                raise ValueError(f"{f}:{lineno}: variant {cname!r} is not in {variants_file}")
            data.append(Datum(image_dir / f"{parts[0]}.jpg", cname2lab[cname], clean_classname(cname)))
        out[split] = data
    return out


# --------------------------------------------------------------------------------------------
# Loading


def _label_map(name: str, splits: Mapping[str, list[Datum]],
               listed: Mapping[int, str] | None = None) -> tuple[list[str], dict[int, str]]:
    """One label -> class-name map over all splits; labels must be 0..n-1 and names consistent.

    ``listed``: the classes a folder-per-class layout declares (ImageNet and its variants), which are
    classes even where a folder holds no image of a split."""
    lab2cname: dict[int, str] = dict(listed or {})
    for split, data in splits.items():
        for d in data:
            prev = lab2cname.setdefault(d.label, d.classname)
            if prev != d.classname:
                raise ValueError(f"{name}: label {d.label} is {prev!r} in one place and "
                                 f"{d.classname!r} in {split} ({d.impath})")
    labels = sorted(lab2cname)
    if labels != list(range(len(labels))):
        gaps = sorted(set(range(labels[-1] + 1)) - set(labels)) if labels else []
        raise ValueError(f"{name}: labels must be contiguous from 0; missing {gaps[:10]}")
    return [lab2cname[i] for i in labels], {i: lab2cname[i] for i in labels}


def _classnames_path(root: Path, dataset_dir: Path, spec: DatasetSpec) -> Path:
    # CoOp's DATASETS.md asks to copy imagenet/classnames.txt into each variant's folder; when the
    # copy is absent we fall back to the ImageNet one rather than failing.
    own = dataset_dir / (spec.classnames_file or "classnames.txt")
    fallback = root / "imagenet" / "classnames.txt"
    return own if own.is_file() or not fallback.is_file() else fallback


def load_dataset(root: str | os.PathLike, name: str, registry: Mapping[str, DatasetSpec] | None = None,
                 *, verify: bool = False) -> CoopDataset:
    """Load dataset ``name`` from the CoOp data root ``root``.

    Unknown names fall back to the generic mini layout (``<root>/<name>/split_zhou_<name>.json``)
    when that file exists, so generated datasets need no registration.
    """
    root = Path(root)
    spec = get_spec(name, registry)
    if spec is None:
        generic = split_zhou_spec(name)
        if (root / generic.dataset_dir / generic.split_file).is_file():
            spec = generic
        else:
            known = sorted(COOP_DATASETS if registry is None else registry)
            raise KeyError(f"unknown dataset {name!r}: not registered ({', '.join(known)}) and no "
                           f"{root / generic.dataset_dir / generic.split_file}")
    if spec.loader not in LOADERS:
        raise ValueError(f"{spec.name}: unknown loader {spec.loader!r} (one of {LOADERS})")
    dataset_dir = root / spec.dataset_dir
    if not dataset_dir.is_dir():
        raise FileNotFoundError(f"{spec.name}: dataset folder not found: {dataset_dir} "
                                f"(expected CoOp's layout under the data root {root})")
    image_dir = dataset_dir / spec.image_dir if spec.image_dir else dataset_dir
    if not image_dir.is_dir():
        raise FileNotFoundError(f"{spec.name}: image folder not found: {image_dir}")

    listed: dict[int, str] = {}
    if spec.loader == "split_zhou":
        assert spec.split_file is not None, f"{spec.name}: split_zhou loader needs a split_file"
        splits = read_split(dataset_dir / spec.split_file, image_dir, rename=spec.rename, verify=verify)
    elif spec.loader == "fgvc_aircraft":
        splits = _read_fgvc(dataset_dir, image_dir)
    else:
        cn_file = _classnames_path(root, dataset_dir, spec)
        classnames = read_classnames(cn_file)
        if spec.loader == "imagenet":  # the classes are train's folders
            train, listed = _read_wnid_folders(image_dir / "train", classnames, cn_file, spec.ignore, sort_images=False)
            test, _ = _read_wnid_folders(image_dir / "val", classnames, cn_file, spec.ignore, sort_images=False)
            splits = {"train": train, "val": test, "test": test}
        elif spec.loader == "imagenetv2":
            listed = {i: clean_classname(c) for i, c in enumerate(classnames.values())}
            splits = {"train": [], "val": [], "test": _read_imagenetv2(image_dir, classnames)}
        else:  # imagenet_folders: a test-only set (CoOp passes it as train_x too; we keep train empty)
            test, listed = _read_wnid_folders(image_dir, classnames, cn_file, spec.ignore)
            splits = {"train": [], "val": [], "test": test}
    if verify and spec.loader != "split_zhou":
        verify_images([d for k in SPLITS for d in splits[k]], source=dataset_dir)
    classnames_list, lab2cname = _label_map(spec.name, splits, listed)  # listed: {} where a split file names the classes
    return CoopDataset(spec.name, image_dir, list(splits["train"]), list(splits["val"]),
                       list(splits["test"]), classnames_list, lab2cname, spec.fewshot_val, dataset_dir)


# --------------------------------------------------------------------------------------------
# Few-shot sampling


def _by_label(data: Iterable[Datum]) -> dict[int, list[Datum]]:
    """Items grouped by label, classes in order of first appearance (Dassl's ``split_dataset_by_label``
    is a ``defaultdict``: its iteration order is the order in which the split list first names each class)."""
    groups: dict[int, list[Datum]] = defaultdict(list)
    for d in data:
        groups[d.label].append(d)
    return dict(groups)


def generate_fewshot(data: Sequence[Datum], num_shots: int, seed: int | random.Random, repeat: bool = False, *,
                     dataset: str = "dataset", split: str = "train") -> list[Datum]:
    """K items per class by Dassl's rule (``DatasetBase.generate_fewshot_dataset``).

    Classes are visited in order of first appearance in ``data``; each draws ``rng.sample(items, K)``.
    A class with fewer than K items keeps all of them, with a warning naming dataset, split, class and
    counts (Dassl keeps them silently), or draws ``rng.choices(items, k=K)`` when ``repeat``. ``seed`` may
    be a ``random.Random`` so that train and val share one stream, as they do in CoOp (both are drawn
    from Python's global ``random``, seeded once with ``cfg.SEED``). ``num_shots < 1`` returns the data
    unchanged (CoOp's "all shots").
    """
    if num_shots < 1:
        return list(data)
    rng = seed if isinstance(seed, random.Random) else random.Random(seed)
    out: list[Datum] = []
    short: list[str] = []
    for label, items in _by_label(data).items():
        if len(items) >= num_shots:
            out.extend(rng.sample(items, num_shots))
        elif repeat:
            out.extend(rng.choices(items, k=num_shots))
        else:
            short.append(f"class {label} ({items[0].classname!r}) has {len(items)} image(s)")
            out.extend(items)
    if short:
        log.warning("%s: %s: %d class(es) have fewer than %d shots, all of their images are kept (Dassl's rule; "
                    "repeat=True samples with replacement): %s%s", dataset, split, len(short), num_shots,
                    "; ".join(short[:5]), " ..." if len(short) > 5 else "")
    return out


# the few-shot sampling rule a cache was written by (older caches drew val from a restarted stream)
FEWSHOT_RULE = "dassl-v1"


def _fingerprint(dataset: CoopDataset) -> str:
    return stable_hash([[to_item(d, dataset.image_dir) for d in dataset.train],
                        [to_item(d, dataset.image_dir) for d in dataset.val]])


def fewshot_cache_path(cache_dir: str | os.PathLike, dataset: str, shots: int, seed: int,
                       repeat: bool = False) -> Path:
    """``<cache_dir>/<dataset>/shot_<K>-seed_<seed>.json`` (CoOp's naming, JSON instead of pickle)."""
    suffix = "-repeat" if repeat else ""
    return Path(cache_dir) / dataset / f"shot_{shots}-seed_{seed}{suffix}.json"


def _items_to_data(items: Any, image_dir: Path, where: str) -> list[Datum]:
    if not isinstance(items, list):
        raise ValueError(f"{where}: expected a list of items")
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, list) or len(item) != 3 or not isinstance(item[1], int):
            raise ValueError(f"{where}[{i}]: expected [relative_image_path, int_label, classname], got {item!r}")
        out.append(Datum(image_dir / _safe_relpath(item[0], f"{where}[{i}]"), item[1], item[2]))
    return out


def fewshot_split(dataset: CoopDataset, shots: int, seed: int, cache_dir: str | os.PathLike | None = None,
                  *, repeat: bool = False) -> CoopDataset:
    """The dataset with train (K/class) and val (min(K, 4)/class) replaced by a few-shot sample.

    The selection is cached as JSON (relative paths) under ``cache_dir`` and reused when present,
    so every method and every stage sees the same images for a (K, seed). The cache records a
    fingerprint of the full train/val lists; if the dataset changed since, we refuse instead of
    silently mixing selections. A cache written by another sampling rule (``rule`` differs from
    :data:`FEWSHOT_RULE`) is resampled and overwritten. Test is untouched. ImageNet keeps val = test (CoOp).
    """
    if shots < 1:
        return dataset
    if not dataset.train:
        raise ValueError(f"{dataset.name}: no train split to sample shots from (a test-only dataset?)")
    coop = coop_fewshot(dataset, shots, seed) if not repeat else None
    if coop is not None:
        return coop
    path = fewshot_cache_path(cache_dir, dataset.name, shots, seed, repeat) if cache_dir else None
    fp = _fingerprint(dataset)
    obj = read_json(path) if path is not None and path.is_file() else None
    if obj is not None and isinstance(obj, dict) and obj.get("rule") != FEWSHOT_RULE:
        log.info("%s: written by sampling rule %r, resampling by %r", path, obj.get("rule"), FEWSHOT_RULE)
        obj = None
    if obj is not None:
        if not isinstance(obj, dict) or not {"train", "val", "source"} <= set(obj):
            raise ValueError(f"{path}: malformed few-shot cache (expected keys train, val, source)")
        if obj["source"] != fp:
            raise ValueError(f"{path}: few-shot cache was made from a different {dataset.name} split "
                             f"(fingerprint {obj['source']} != {fp}); delete it to resample")
        train = _items_to_data(obj["train"], dataset.image_dir, f"{path}: train")
        val = _items_to_data(obj["val"], dataset.image_dir, f"{path}: val")
        log.debug("loaded few-shot selection %s", path)
    else:
        rng = random.Random(seed)  # one stream: train first, then val (CoOp's order)
        train = generate_fewshot(dataset.train, shots, rng, repeat, dataset=dataset.name, split="train")
        val = (generate_fewshot(dataset.val, min(shots, 4), rng, repeat, dataset=dataset.name, split="val")
               if dataset.fewshot_val else [])
        if path is not None:
            write_json(path, {"dataset": dataset.name, "shots": shots, "seed": seed, "repeat": repeat,
                              "rule": FEWSHOT_RULE, "source": fp,
                              "train": [to_item(d, dataset.image_dir) for d in train],
                              "val": [to_item(d, dataset.image_dir) for d in val]}, indent=None)
            log.info("wrote few-shot selection %s", path)
    if not dataset.fewshot_val:
        val = list(dataset.val)
    return dataclasses.replace(dataset, train=train, val=val)


def coop_fewshot(dataset: CoopDataset, shots: int, seed: int) -> CoopDataset | None:
    """CoOp's own selection when its ``split_fewshot`` pickle is in the dataset folder, else None.

    The pickle (read by a restricted unpickler, :mod:`gramlib.data.coop_pickle`) wins over our sampling:
    it holds the images CoOp's published numbers used. Whether Dassl's rule here picks the same is logged.
    """
    from gramlib.data.coop_pickle import load_split_fewshot, match_items, split_fewshot_path

    if dataset.dataset_dir is None:
        return None
    path = split_fewshot_path(dataset.dataset_dir, shots, seed)
    if not path.is_file():
        return None
    recs = load_split_fewshot(path)
    train = match_items(recs["train"], dataset.train, dataset.image_dir, f"{path}: train")
    if not dataset.fewshot_val:  # ImageNet: CoOp pickles train only; val stays the test set
        val = list(dataset.val)
    elif "val" in recs:
        val = match_items(recs["val"], dataset.val, dataset.image_dir, f"{path}: val")
    else:
        raise ValueError(f"{path}: no val selection; CoOp writes train and val for {dataset.name}")
    rng = random.Random(seed)
    ours = generate_fewshot(dataset.train, shots, rng, dataset=dataset.name, split="train")
    same = [d.impath for d in ours] == [d.impath for d in train]
    log.log(logging.INFO if same else logging.WARNING, "%s: CoOp's few-shot selection used (%d train, %d val); "
            "Dassl's rule here picks %s", path, len(train), len(val), "the same images" if same else "other images")
    return dataclasses.replace(dataset, train=train, val=val)


# --------------------------------------------------------------------------------------------
# Base-to-new split


def subsample_classes(*splits: Sequence[Datum], subsample: str = "all") -> tuple[list[Datum], ...]:
    """CoCoOp's base/new split: labels of the *first* split sorted, ``m = ceil(n / 2)``; base = the
    first m labels, new = the rest; kept items are relabelled from 0. Apply after few-shot sampling.
    """
    if subsample not in ("all", "base", "new"):
        raise ValueError(f"subsample must be 'all', 'base' or 'new', got {subsample!r}")
    if subsample == "all":
        return tuple(list(s) for s in splits)
    if not splits:
        return ()
    labels = sorted({d.label for d in splits[0]})
    m = math.ceil(len(labels) / 2)
    selected = labels[:m] if subsample == "base" else labels[m:]
    relabel = {y: i for i, y in enumerate(selected)}
    return tuple([dataclasses.replace(d, label=relabel[d.label]) for d in s if d.label in relabel]
                 for s in splits)


def subsample_dataset(dataset: CoopDataset, subsample: str = "all") -> CoopDataset:
    """:func:`subsample_classes` over a whole dataset, with class names relabelled to match.

    The labels are decided on the full class list (``dataset.classnames``), not on whichever
    classes happen to appear in a few-shot train split, so base/new is the same for every K.
    """
    if subsample == "all":
        return dataset
    anchor = [Datum(Path(), i, c) for i, c in enumerate(dataset.classnames)]
    _, train, val, test = subsample_classes(anchor, dataset.train, dataset.val, dataset.test,
                                            subsample=subsample)
    kept = subsample_classes(anchor, subsample=subsample)[0]
    classnames = [d.classname for d in kept]
    return dataclasses.replace(dataset, train=train, val=val,
                               test=test, classnames=classnames,
                               lab2cname=dict(enumerate(classnames)))
