"""The mini world's specification (``data/spec/miniworld.yaml``) as typed, validated objects."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from gramlib.world.render import SHAPES, STYLES, UNSEEN_STYLES, RenderOptions

DEFAULT_SPEC = Path(__file__).resolve().parents[2] / "data" / "spec" / "miniworld.yaml"


@dataclass(frozen=True)
class Concept:
    name: str
    family: str
    synonyms: tuple[str, ...]

    @property
    def classname(self) -> str:
        """The class name a downstream dataset uses (CoOp rule: ``_`` becomes a space)."""
        return self.name.replace("_", " ")


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    role: str  # source | variant | target
    concepts: tuple[str, ...]
    styles: dict[str, float]
    render: RenderOptions
    template: str
    split: dict[str, int]
    of: str | None = None


@dataclass(frozen=True)
class CaptionSpec:
    generic_phrases: tuple[str, ...]
    style_phrase_p: float
    size_words: dict[str, tuple[str, ...]]
    size_word_p: float
    colour_word_p: float
    context_p: float
    contexts: tuple[str, ...]
    mismatch_fraction: float


@dataclass(frozen=True)
class WorldSpec:
    concepts: dict[str, Concept]
    style_phrases: dict[str, tuple[str, ...]]
    captions: CaptionSpec
    datasets: dict[str, DatasetSpec] = field(default_factory=dict)

    @property
    def families(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for c in self.concepts.values():
            out.setdefault(c.family, []).append(c.name)
        return out

    def subset(self, concepts_per_family: int | None) -> "WorldSpec":
        """A smaller world (the smoke profile): the first k concepts of every family."""
        if not concepts_per_family:
            return self
        keep = {n for names in self.families.values() for n in names[:concepts_per_family]}
        datasets = {}
        for name, d in self.datasets.items():
            cs = tuple(c for c in d.concepts if c in keep)
            if len(cs) >= 2:
                datasets[name] = DatasetSpec(**{**d.__dict__, "concepts": cs})
        return WorldSpec({k: v for k, v in self.concepts.items() if k in keep}, self.style_phrases, self.captions, datasets)


def load_spec(path: str | Path = DEFAULT_SPEC) -> WorldSpec:
    """Read and validate the world spec; every error names the file and the offending field."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"world spec not found: {path}")
    raw = yaml.safe_load(path.read_text())
    for key in ("families", "styles", "captions", "datasets"):
        if key not in raw:
            raise ValueError(f"{path}: missing top-level key {key!r}")
    concepts: dict[str, Concept] = {}
    for family, members in raw["families"].items():
        for name, syns in members.items():
            if name not in SHAPES:
                raise ValueError(f"{path}: families.{family}.{name}: no renderer for this concept")
            if not syns:
                raise ValueError(f"{path}: families.{family}.{name}: needs at least one synonym")
            concepts[name] = Concept(name, family, tuple(str(s) for s in syns))
    styles = {k: tuple(v) for k, v in raw["styles"].items()}
    for s in styles:
        if s not in STYLES:
            raise ValueError(f"{path}: styles.{s}: unknown style (renderer knows {list(STYLES)})")
    c = raw["captions"]
    caption_spec = CaptionSpec(
        generic_phrases=tuple(c["generic_phrases"]), style_phrase_p=float(c["style_phrase_p"]),
        size_words={k: tuple(v) for k, v in c["size_words"].items()}, size_word_p=float(c["size_word_p"]),
        colour_word_p=float(c["colour_word_p"]), context_p=float(c["context_p"]), contexts=tuple(c["contexts"]),
        mismatch_fraction=float(c["mismatch_fraction"]),
    )
    datasets: dict[str, DatasetSpec] = {}
    for name, d in raw["datasets"].items():
        where = f"{path}: datasets.{name}"
        if d.get("role") == "variant":
            parent = raw["datasets"].get(d.get("of"))
            if parent is None:
                raise ValueError(f"{where}.of: unknown source dataset {d.get('of')!r}")
            members = _dataset_concepts(parent, raw, concepts, f"{path}: datasets.{d['of']}")
        else:
            members = _dataset_concepts(d, raw, concepts, where)
        for s in d["styles"]:
            if s not in styles and s not in UNSEEN_STYLES:
                raise ValueError(f"{where}.styles: unknown style {s!r} (the spec's styles {sorted(styles)}, "
                                 f"or one pre-training never shows: {list(UNSEEN_STYLES)})")
        if "{}" not in d["template"]:
            raise ValueError(f"{where}.template: must contain '{{}}' for the class name")
        datasets[name] = DatasetSpec(name, d["role"], members, {k: float(v) for k, v in d["styles"].items()},
                                     RenderOptions.from_spec(d.get("render")), d["template"],
                                     {k: int(v) for k, v in d["split"].items()}, d.get("of"))
    return WorldSpec(concepts, styles, caption_spec, datasets)


def _dataset_concepts(d: dict, raw: dict, concepts: dict[str, Concept], where: str) -> tuple[str, ...]:
    if "concepts" in d:
        for cname in d["concepts"]:
            if cname not in concepts:
                raise ValueError(f"{where}.concepts: unknown concept {cname!r}")
        return tuple(d["concepts"])
    members = []
    for fam in d["families"]:
        if fam not in raw["families"]:
            raise ValueError(f"{where}.families: unknown family {fam!r}")
        members.extend(raw["families"][fam])
    return tuple(members)
