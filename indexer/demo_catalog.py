"""The offline demo catalog: real Fashion-MNIST product photos, recoloured, patterned and described.

Each 28x28 grey photo is upscaled, its grey level read as the shading of the garment on a white
background, then painted in one of ten named colours with one of four patterns. Titles and
descriptions come from varied templates. Everything is a pure function of (seed, split, index), so a
build is reproducible and an interrupted build resumes where it stopped.

The output is an ordinary catalog (``catalog.jsonl`` + ``images/``), exactly what ``lookalike index``
reads; or the same products as a Shopify export or a Merchant Center feed, each with three photos
(the shot, its mirror image and a close-up), so the shop formats can be tried on real pictures.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
import yaml
from PIL import Image, ImageOps

from . import demo_feeds

log = logging.getLogger(__name__)

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_PACKAGE = "dataset-fashion-mnist"

# `make demo` defaults: a train catalog for `lookalike train` and the held-out test catalog it is
# evaluated on (all of t10k, so every colour x category x pattern cell has ~25 items).
DEMO_TRAIN_ITEMS = 20_000
DEMO_TEST_ITEMS = 10_000
DEMO_SEED = 0
DEMO_IMAGE_SIZE = 96

CATALOG_FILE = "catalog.jsonl"
IMAGES_DIR = "images"
DemoFormat = Literal["plain", "shopify", "gmc", "gmc-xml"]
# output format -> (catalog file, writer of the shop formats)
FEED_FILES: dict[str, tuple[str, Callable | None]] = {
    "plain": (CATALOG_FILE, None),
    "shopify": ("products.csv", demo_feeds.write_shopify),
    "gmc": ("feed.tsv", demo_feeds.write_gmc_tsv),
    "gmc-xml": ("feed.xml", demo_feeds.write_gmc_xml),
}
DETAIL_CROP = 0.7  # the close-up photo shows the middle 70% of the shot
_MARKER = ".demo-catalog.json"
_FORMAT_VERSION = 1

ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class Category:
    name: str
    synonyms: tuple[str, ...]
    price_range: tuple[float, float]
    details: tuple[str, ...]


# Fashion-MNIST label order. The first name is the canonical one used for tags and evaluation.
CATEGORIES: tuple[Category, ...] = (
    Category("t-shirt", ("tee", "top"), (8, 35), ("Soft cotton jersey.", "Crew neck, short sleeves.")),
    Category("trousers", ("pants", "slacks"), (25, 90), ("Straight leg, mid rise.", "Belt loops and pockets.")),
    Category("pullover", ("sweater", "jumper"), (30, 110), ("Warm knit, long sleeves.", "Ribbed cuffs.")),
    Category("dress", ("frock", "day dress"), (25, 150), ("Flattering cut.", "Falls just above the knee.")),
    Category("coat", ("overcoat", "jacket"), (60, 250), ("Lined for cold days.", "Full length sleeves, buttons.")),
    Category("sandal", ("sandals", "slider"), (15, 70), ("Open toe with straps.", "Cushioned footbed.")),
    Category("shirt", ("button-down shirt", "blouse"), (20, 80), ("Collared, buttons down the front.",)),
    Category("sneaker", ("sneakers", "trainers"), (40, 150), ("Lace-up, rubber sole.", "Light and sporty.")),
    Category("bag", ("handbag", "tote bag"), (20, 200), ("Roomy inside.", "Sturdy handles.")),
    Category("ankle boot", ("ankle boots", "boots"), (50, 200), ("Block heel.", "Ends just above the ankle.")),
)

# (name, garment RGB, pattern accent RGB). Accents are near-white, or grey on black, so a pattern never
# adds a second hue and the colour label stays unambiguous.
COLOUR_TABLE: tuple[tuple[str, tuple[int, int, int], tuple[int, int, int]], ...] = (
    ("red", (215, 30, 35), (250, 235, 235)),
    ("orange", (250, 135, 20), (252, 240, 225)),
    ("yellow", (250, 215, 30), (120, 100, 10)),
    ("green", (50, 165, 55), (235, 250, 235)),
    ("teal", (15, 160, 150), (230, 250, 248)),
    ("blue", (35, 85, 220), (235, 240, 252)),
    ("purple", (130, 50, 190), (245, 235, 250)),
    ("pink", (250, 130, 185), (255, 240, 246)),
    ("brown", (125, 75, 35), (235, 215, 190)),
    ("black", (35, 35, 38), (200, 200, 200)),
)
COLOURS: tuple[str, ...] = tuple(c[0] for c in COLOUR_TABLE)
PATTERNS: tuple[str, ...] = ("plain", "striped", "dotted", "checked")

_PATTERN_WORDS = {
    "plain": ("plain", "solid"),
    "striped": ("striped", "stripe"),
    "dotted": ("dotted", "polka dot"),
    "checked": ("checked", "check"),
}
_PATTERN_SENTENCES = {
    "plain": ("A plain design in one solid colour.", "No pattern, just clean solid colour."),
    "striped": ("Bold stripes run across it.", "A classic striped pattern."),
    "dotted": ("Covered in polka dots.", "A playful dotted pattern."),
    "checked": ("A checked pattern, gingham style.", "Checked all over."),
}
BRANDS: tuple[str, ...] = ("Northwind", "Fjordline", "Urbanite", "Maple Lane", "Kestrel", "Solstice")

# Zero-shot tagging and evaluation prompts. They follow the wording of the catalog text, which is the
# only language the demo model has ever read.
TAG_PROMPTS: dict[str, tuple[str, ...]] = {
    "colour": ("a {} item", "{}", "in {}"),
    "category": ("a {}", "{}"),
    "pattern": ("a {} item", "{} pattern"),
}


def label_sets() -> dict[str, tuple[str, ...]]:
    """The demo's attribute vocabularies: label-set name -> labels (payload values)."""
    return {"colour": COLOURS, "category": tuple(c.name for c in CATEGORIES), "pattern": PATTERNS}


def write_tag_vocab(path: Path) -> Path:
    """Write the demo's zero-shot tag vocabulary (``--tags VOCAB.yaml``) with its prompt templates."""
    vocab = {
        name: {"labels": list(labels), "prompts": list(TAG_PROMPTS[name])} for name, labels in label_sets().items()
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(vocab, sort_keys=False))
    os.replace(tmp, path)
    return path


class DemoDatasetMissing(FileNotFoundError):
    """The Fashion-MNIST files are not installed."""


@dataclass(frozen=True)
class DemoCatalogConfig:
    items: int = DEMO_TEST_ITEMS
    seed: int = DEMO_SEED
    split: Literal["train", "test"] = "test"
    image_size: int = DEMO_IMAGE_SIZE
    dataset_dir: Path = FASHION_MNIST_DIR
    format: DemoFormat = "plain"

    def __post_init__(self) -> None:
        if self.split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', not {self.split!r}")
        if self.format not in FEED_FILES:
            raise ValueError(f"format must be one of {', '.join(FEED_FILES)}, not {self.format!r}")
        if self.items < 1:
            raise ValueError(f"items must be at least 1, not {self.items}")
        if not 28 <= self.image_size <= 1024:
            raise ValueError(f"image_size must be between 28 and 1024, not {self.image_size}")


@dataclass(frozen=True)
class _Item:
    """Everything about one catalog item except its pixels."""

    source: int
    label: int
    colour: int
    pattern: int
    phase: tuple[float, float]
    period: float


def load_fashion_mnist(dataset_dir: Path, split: Literal["train", "test"]) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N,28,28), labels uint8 (N,)) of one split; ``test`` is Fashion-MNIST's t10k."""
    prefix = "train" if split == "train" else "t10k"
    img_path = Path(dataset_dir) / f"{prefix}-images-idx3-ubyte.gz"
    lbl_path = Path(dataset_dir) / f"{prefix}-labels-idx1-ubyte.gz"
    for p in (img_path, lbl_path):
        if not p.is_file():
            raise DemoDatasetMissing(
                f"Fashion-MNIST file {p} is missing. The demo catalog is built from the Debian package "
                f"{FASHION_MNIST_PACKAGE}: install it with `sudo apt-get install {FASHION_MNIST_PACKAGE}`."
            )
    return _read_idx(img_path, 2051, 3), _read_idx(lbl_path, 2049, 1)


@lru_cache(maxsize=4)
def _read_idx(path: Path, magic: int, ndim: int) -> np.ndarray:
    raw = gzip.decompress(path.read_bytes())
    header = 4 * (1 + ndim)
    if len(raw) < header or int.from_bytes(raw[:4], "big") != magic:
        raise ValueError(f"{path}: not an IDX file with magic number {magic}")
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=header)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {dims} but holds {data.size} bytes")
    return data.reshape(dims)


def build_demo_catalog(out_dir: Path, config: DemoCatalogConfig, progress: ProgressFn | None = None) -> Path:
    """Write ``OUT_DIR/images/*.png`` and the catalog file (``catalog.jsonl``, or the ``config.format``
    feed of :data:`FEED_FILES`); returns the catalog path.

    Images are written first, each atomically, and existing ones are kept, so a killed or disk-full build
    resumes on re-run. The catalog file is written last, atomically: its presence means a complete build.
    """
    out_dir = Path(out_dir)
    images, labels = load_fashion_mnist(config.dataset_dir, config.split)
    if config.items > len(images):
        raise ValueError(f"--items {config.items} is more than the {len(images)} Fashion-MNIST {config.split} images")
    _claim_dir(out_dir, config)
    (out_dir / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    plan = plan_items(config, labels)
    rows, photos = [], []
    for i, item in enumerate(plan):
        row = describe_item(config, i, item)
        shots = photo_names(row["image"]) if config.format != "plain" else [row["image"]]
        missing = [k for k, name in enumerate(shots) if not _is_written(out_dir / name)]
        if missing:
            img = render_item(images[item.source], item, config.image_size)
            views = [img, *photo_views(img)]
            for k in missing:
                _save_png(views[k], out_dir / shots[k])
        rows.append(row)
        photos.append(shots)
        if progress is not None:
            progress(i + 1, len(plan))
    name, writer = FEED_FILES[config.format]
    catalog = out_dir / name
    tmp = catalog.with_name(f"{catalog.name}.{os.getpid()}.tmp")
    if writer is None:
        with tmp.open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    else:
        writer(tmp, rows, photos)
    os.replace(tmp, catalog)
    log.info("demo catalog: %d %s items in %s", len(rows), config.split, catalog)
    return catalog


def photo_names(image: str) -> list[str]:
    """``images/x.png`` -> the shot, its mirror image and its close-up: ``images/x.png, x-2.png, x-3.png``."""
    stem, suffix = image.rsplit(".", 1)
    return [image, f"{stem}-2.{suffix}", f"{stem}-3.{suffix}"]


def photo_views(img: Image.Image) -> list[Image.Image]:
    """The further photos of a product: its shot mirrored, and a close-up of its middle."""
    w, h = img.size
    dx, dy = round(w * (1 - DETAIL_CROP) / 2), round(h * (1 - DETAIL_CROP) / 2)
    detail = img.crop((dx, dy, w - dx, h - dy)).resize((w, h), Image.Resampling.LANCZOS)
    return [ImageOps.mirror(img), detail]


def _is_written(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 0


def _save_png(img: Image.Image, path: Path) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # two builds of one folder must not collide
    img.save(tmp, format="PNG", compress_level=3)
    os.replace(tmp, path)


def _claim_dir(out_dir: Path, config: DemoCatalogConfig) -> None:
    """Refuse to mix two different builds (or a user's files) in one directory."""
    # The format is left out: every format shares the same photos, so one folder can hold them all.
    settings = {k: v for k, v in asdict(config).items() if k not in ("items", "dataset_dir", "format")}
    settings["version"] = _FORMAT_VERSION
    marker = out_dir / _MARKER
    if marker.is_file():
        previous = json.loads(marker.read_text())
        if previous != settings:
            raise FileExistsError(
                f"{out_dir} holds a demo catalog built with {previous}, not {settings}; "
                "use another directory or delete this one"
            )
        return
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} is not empty and is not a demo catalog; use a new directory")
    out_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(settings))


def plan_items(config: DemoCatalogConfig, labels: np.ndarray) -> list[_Item]:
    """Attributes of the first ``config.items`` items. Drawn for the whole split at once, so item i is
    the same whatever ``items`` is: a bigger build extends a smaller one."""
    n = len(labels)
    rng = np.random.default_rng([config.seed, 0 if config.split == "train" else 1])
    order = rng.permutation(n)
    colours = rng.integers(0, len(COLOURS), n)
    patterns = rng.integers(0, len(PATTERNS), n)
    phases = rng.random((n, 2))
    periods = rng.uniform(0.9, 1.1, n)
    return [
        _Item(
            source=int(order[i]),
            label=int(labels[order[i]]),
            colour=int(colours[i]),
            pattern=int(patterns[i]),
            phase=(float(phases[i, 0]), float(phases[i, 1])),
            period=float(periods[i]),
        )
        for i in range(config.items)
    ]


def render_item(grey: np.ndarray, item: _Item, size: int) -> Image.Image:
    """Paint one 28x28 grey photo: grey level = garment shading, black background -> white."""
    up = np.asarray(Image.fromarray(grey).resize((size, size), Image.Resampling.LANCZOS), dtype=np.float32)
    up = np.clip(up, 0, 255)
    # Coverage ramps over the darkest grey levels so edges stay anti-aliased.
    alpha = np.clip(up / 40.0, 0.0, 1.0)[..., None]
    inside = up[up > 40]
    top = float(np.percentile(inside, 95)) if inside.size else 255.0
    # Shading is relative to the photo's own brightness: a dark original must not turn orange into brown.
    shade = (0.62 + 0.38 * np.clip(up / max(top, 1.0), 0.0, 1.0))[..., None]
    _, base, accent = COLOUR_TABLE[item.colour]
    amount = pattern_mask(PATTERNS[item.pattern], size, item.phase, item.period)[..., None]
    paint = (1.0 - amount) * np.asarray(base, np.float32) + amount * np.asarray(accent, np.float32)
    rgb = alpha * (paint * shade) + (1.0 - alpha) * 255.0
    return Image.fromarray(np.clip(rgb + 0.5, 0, 255).astype(np.uint8), mode="RGB")


def pattern_mask(pattern: str, size: int, phase: tuple[float, float], period_scale: float = 1.0) -> np.ndarray:
    """How much accent colour each pixel gets, in [0, 1], anti-aliased; scale-free in ``size``."""
    if pattern == "plain":
        return np.zeros((size, size), np.float32)
    period = size / 8.0 * period_scale
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    ys = (yy / period + phase[0]) % 1.0
    xs = (xx / period + phase[1]) % 1.0

    def band(t: np.ndarray, width: float) -> np.ndarray:
        dist = np.abs(t - 0.5) * period
        return np.clip(width * period / 2 - dist + 0.5, 0.0, 1.0)

    if pattern == "striped":
        return band(ys, 0.45)
    if pattern == "checked":
        return 0.55 * band(ys, 0.5) + 0.45 * band(xs, 0.5)
    if pattern == "dotted":
        # Alternate rows shift by half a period, as printed polka dots do.
        row = np.floor(yy / period + phase[0])
        xs = (xs + 0.5 * (row % 2)) % 1.0
        dist = np.hypot(ys - 0.5, xs - 0.5) * period
        return np.clip(0.28 * period - dist + 0.5, 0.0, 1.0)
    raise ValueError(f"unknown pattern {pattern!r}; expected one of {PATTERNS}")


def describe_item(config: DemoCatalogConfig, index: int, item: _Item) -> dict[str, object]:
    """The catalog row of one item: text from templates, deterministic price, brand and stock."""
    rng = np.random.default_rng([config.seed, 0 if config.split == "train" else 1, index, 7])
    cat = CATEGORIES[item.label]
    colour = COLOURS[item.colour]
    pattern = PATTERNS[item.pattern]
    brand = BRANDS[int(rng.integers(len(BRANDS)))]
    noun = cat.name if rng.random() < 0.6 else cat.synonyms[int(rng.integers(len(cat.synonyms)))]
    pat_word = _PATTERN_WORDS[pattern][int(rng.random() < 0.3)]
    title_pat = "" if pattern == "plain" and rng.random() < 0.5 else f"{pat_word} "
    titles = (
        f"{colour} {title_pat}{noun}",
        f"{brand} {colour} {title_pat}{noun}",
        f"{title_pat}{noun} in {colour}",
        f"{colour} {noun}, {pat_word}",
    )
    title = _cap(titles[int(rng.integers(len(titles)))])
    sentences = [
        (
            f"{_article(colour)} {colour} {noun} with a {pat_word} pattern.",
            f"This {noun} comes in {colour}.",
            f"{_cap(pat_word)} {noun} in {colour}.",
            f"{_article(colour)} {colour} {pat_word} {noun} by {brand}.",
        )[int(rng.integers(4))],
        (f"Colour: {colour}.", f"Shown in {colour}.", f"A {colour} item.")[int(rng.integers(3))],
        _PATTERN_SENTENCES[pattern][int(rng.integers(2))],
        cat.details[int(rng.integers(len(cat.details)))],
    ]
    first, rest = sentences[0], sentences[1:]
    rng.shuffle(rest)
    description = " ".join([first, *rest[: 1 + int(rng.integers(3))]])
    lo, hi = cat.price_range
    price = round(float(np.floor(lo + (hi - lo) * rng.random())) + 0.99, 2)
    item_id = f"{config.split}-{index:05d}"
    return {
        "id": item_id,
        # Codes a shop's feed carries, derived from the index alone (no random draw, so the other fields
        # stay as they were): a SKU, and a GTIN-13 in the in-store range (prefix 2) with its check digit.
        "sku": f"LK-{config.split[:2].upper()}{index:05d}",
        "gtin": gtin13(f"20{int(config.split == 'test')}{index:09d}"),
        "title": title,
        "description": description,
        "image": f"{IMAGES_DIR}/{item_id}.png",
        "category": cat.name,
        "colour": colour,
        "pattern": pattern,
        "price": price,
        "brand": brand,
        "in_stock": bool(rng.random() < 0.85),
    }


def gtin13(first12: str) -> str:
    """A GTIN-13 (EAN-13): the 12 digits and their check digit (weights 1, 3, 1, 3, ... from the left)."""
    total = sum(int(d) * (3 if i % 2 else 1) for i, d in enumerate(first12))
    return first12 + str((10 - total % 10) % 10)


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _article(word: str) -> str:
    return "An" if re.match(r"[aeiou]", word) else "A"
