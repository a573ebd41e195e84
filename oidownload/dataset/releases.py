"""What each Open Images release publishes, as named groups of files (images, boxes,
segmentation, masks, relationships, points, narratives...), where each is served from,
and which of them a `metadata --only` selection picks. Data and pure functions; the
fetching is metadata.py's.

This is the one place the URLs live. A file is a path relative to its group's host:
the openimages bucket (BASE_URL, which --base-url replaces) or the localized-narratives
bucket (NARRATIVES_BASE_URL; with --base-url and no --narratives-base-url, the mirror's
NARRATIVES_SUBPATH). Sources for every name: the research notes of issues 22/23
(fiftyone's openimages.py, the localized-narratives index page, HTTP HEAD checks).
"""

from __future__ import annotations

import enum
import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from oidownload.core.errors import ConfigError

BASE_URL = "https://storage.googleapis.com/openimages/"
NARRATIVES_BASE_URL = "https://storage.googleapis.com/localized-narratives/annotations/"
# Under --base-url, a mirror of both buckets keeps the narratives at their bucket path.
NARRATIVES_SUBPATH = "localized-narratives/annotations/"
# The V5 segmentation release is the one V6 and V7 still link: masks live only here.
_MASKS_DIR = "v5/"
MASKS_URL = BASE_URL + _MASKS_DIR  # the default --masks-url: mask_zip_url's base
_SPLITS = ("train", "validation", "test")
MASK_SPLITS = _SPLITS
MASK_DIGITS = "0123456789abcdef"  # a split's masks come in 16 zips, by the ImageID's first hex digit


class Host(enum.StrEnum):
    OPENIMAGES = "openimages"
    NARRATIVES = "narratives"


@dataclass(frozen=True)
class Group:
    name: str  # what --only calls it
    about: str
    files: tuple[str, ...]  # relative to the host's base URL
    host: Host = Host.OPENIMAGES
    default: bool = True  # False: GBs, fetched only when --only asks for them


def _slash(url: str) -> str:
    return url if url.endswith("/") else url + "/"


def mask_zip_path(split: str, digit: str) -> str:
    """The masks zip of `split` holding the ImageIDs that start with `digit`, relative to
    MASKS_URL: `train-masks/train-masks-0.zip`."""
    c = digit.lower()
    if split not in MASK_SPLITS:
        raise ValueError(f"no masks for split {split!r}; known: {', '.join(MASK_SPLITS)}")
    if len(c) != 1 or c not in MASK_DIGITS:
        raise ValueError(f"{digit!r} is not one hex digit (the first character of an ImageID)")
    return f"{split}-masks/{split}-masks-{c}.zip"


def mask_zip_url(split: str, digit: str, masks_url: str = MASKS_URL) -> str:
    """Where the masks of the ImageIDs of `split` that start with `digit` are served."""
    return _slash(masks_url) + mask_zip_path(split, digit)


def _split_files(pattern: str, splits: Iterable[str] = _SPLITS) -> tuple[str, ...]:
    return tuple(pattern.format(split=s) for s in splits)


# -- the groups, per version -------------------------------------------------------------
# V3 comes as five archives; MEMBERS says what each holds, so that a pattern can pick an
# archive by a member's name and only the matching members are unpacked.
_V3 = (
    Group("images", "the image lists (URLs, licences, sizes)", ("2017_11/images_2017_11.tar.gz",)),
    Group("boxes", "the human-drawn boxes", ("2017_11/annotations_human_bbox_2017_11.tar.gz",)),
    Group("labels", "the human-verified image-level labels", ("2017_11/annotations_human_2017_11.tar.gz",)),
    Group("machine-labels", "the machine-generated image-level labels", ("2017_11/annotations_machine_2017_11.tar.gz",)),
    Group("classes", "class names and class lists", ("2017_11/classes_2017_11.tar.gz",)),
)
MEMBERS: dict[str, tuple[str, ...]] = {
    "images_2017_11.tar.gz": tuple(f"{s}/images.csv" for s in _SPLITS),
    "annotations_human_bbox_2017_11.tar.gz": tuple(f"{s}/annotations-human-bbox.csv" for s in _SPLITS),
    "annotations_human_2017_11.tar.gz": tuple(f"{s}/annotations-human.csv" for s in _SPLITS),
    "annotations_machine_2017_11.tar.gz": tuple(f"{s}/annotations-machine.csv" for s in _SPLITS),
    "classes_2017_11.tar.gz": ("class-descriptions.csv", "classes.txt", "classes-trainable.txt",
                               "classes-bbox.txt", "classes-bbox-trainable.txt"),
}

# The hierarchy is the boxes' (and the masks'): V5 to V7 link the 2018_04 file.
_HIERARCHY = "2018_04/bbox_labels_600_hierarchy.json"
_IMAGES = Group("images", "the image lists (URLs, licences, sizes, rotation)", (
    "v6/oidv6-train-images-with-labels-with-rotation.csv",
    "v5/validation-images-with-rotation.csv",
    "v5/test-images-with-rotation.csv",
))
# V7 has no box files of its own: it links V6's train boxes and V5's validation and test.
_BOXES = Group("boxes", "the boxes, with their attributes (V6 train: with the four extreme clicks)", (
    "v6/oidv6-train-annotations-bbox.csv",
    "v5/validation-annotations-bbox.csv",
    "v5/test-annotations-bbox.csv",
))
_SEGMENTATION = Group(
    "segmentation", "the instance masks' rows (mask PNG name, box, clicks), their 350 classes, the hierarchy", (
        *_split_files("v5/{split}-annotations-object-segmentation.csv"),
        "v5/classes-segmentation.txt",
        _HIERARCHY,
    ))
_MASKS = Group(
    "masks", "the instance mask PNGs, 16 zips a split by the ImageID's first hex digit (train: about 4.4 GB)",
    tuple(_MASKS_DIR + mask_zip_path(s, c) for s in MASK_SPLITS for c in MASK_DIGITS), default=False)
_RELATIONSHIPS = Group("relationships", "the visual relationships (two boxes and a verb), their attributes, "
                       "triplets and verbs", (
    *_split_files("v6/oidv6-{split}-annotations-vrd.csv"),
    "v6/oidv6-attributes-description.csv",
    "v6/oidv6-relationship-triplets.csv",
    "v6/oidv6-relationships-description.csv",
))
_NARRATIVES = Group("narratives", "the localized narratives' captions (train is one file)", (
    *_split_files("open_images_{split}_captions.jsonl", ("train_v6", "validation", "test")),
), host=Host.NARRATIVES)
_TRACES = Group(
    "narratives-traces", "the full localized narratives: captions with mouse traces, timings and voice "
    "file names (train: about 16 GB in 10 shards; validation and test about 1.1 GB)", (
        *(f"open_images_train_v6_localized_narratives-{k:05d}-of-00010.jsonl" for k in range(10)),
        "open_images_validation_localized_narratives.jsonl",
        "open_images_test_localized_narratives.jsonl",
    ), host=Host.NARRATIVES, default=False)

GROUPS: dict[str, tuple[Group, ...]] = {
    "v3": _V3,
    "v6": (
        _IMAGES, _BOXES,
        Group("classes", "class names (boxable and all), the class hierarchy", (
            "v5/class-descriptions-boxable.csv", "v6/oidv6-class-descriptions.csv", _HIERARCHY)),
        Group("labels", "the human-verified image-level labels", (
            "v6/oidv6-train-annotations-human-imagelabels.csv",
            "v5/validation-annotations-human-imagelabels.csv",
            "v5/test-annotations-human-imagelabels.csv",
        )),
        _SEGMENTATION, _MASKS, _RELATIONSHIPS, _NARRATIVES, _TRACES,
    ),
    "v7": (
        _IMAGES, _BOXES,
        Group("classes", "class names (boxable and all), the trainable classes, the class hierarchy", (
            "v5/class-descriptions-boxable.csv", "v7/oidv7-class-descriptions.csv", "v7/oidv7-classes-trainable.txt",
            _HIERARCHY)),
        # V7 spells the validation split `val`.
        Group("labels", "the human-verified image-level labels", (
            *_split_files("v7/oidv7-{split}-annotations-human-imagelabels.csv", ("train", "val", "test")),
        )),
        _SEGMENTATION, _MASKS, _RELATIONSHIPS,
        Group("points", "the point labels (one point, a class, yes/no/unsure votes) and their classes (all of V7's)", (
            *_split_files("v7/oidv7-{split}-annotations-point-labels.csv", ("train", "val", "test")),
            "v7/oidv7-class-descriptions.csv",
        )),
        _NARRATIVES, _TRACES,
    ),
}
VERSIONS = tuple(GROUPS)
# What a version fetches without --only (each path relative to its group's host).
FILES: dict[str, tuple[str, ...]] = {
    v: tuple(dict.fromkeys(f for g in groups if g.default for f in g.files)) for v, groups in GROUPS.items()}
# Sizes as the server published them (HTTP HEAD, rounded), for --list; not checked against:
# a download is checked against the size its own answer announces.
APPROX_SIZES: dict[str, str] = {
    "v7/oidv7-class-descriptions.csv": "501 KB",
    "v7/oidv7-train-annotations-human-imagelabels.csv": "2.74 GB",
    "v7/oidv7-val-annotations-human-imagelabels.csv": "28.4 MB",
    "open_images_train_v6_captions.jsonl": "138 MB",
    "open_images_validation_captions.jsonl": "10.1 MB",
    "open_images_test_captions.jsonl": "31.1 MB",
}


# -- selection ---------------------------------------------------------------------------

def base_urls(base_url: str = BASE_URL, narratives_base_url: str | None = None) -> dict[Host, str]:
    """Each host's base URL: --base-url for the openimages files; the narratives' own
    bucket, or with another --base-url (a mirror, the tests' origin) its
    NARRATIVES_SUBPATH, unless --narratives-base-url says otherwise."""
    base = _slash(base_url)
    if narratives_base_url is not None:
        narratives = _slash(narratives_base_url)
    else:
        narratives = NARRATIVES_BASE_URL if base == BASE_URL else base + NARRATIVES_SUBPATH
    return {Host.OPENIMAGES: base, Host.NARRATIVES: narratives}


def _names(path: str) -> tuple[str, ...]:
    """The spellings a --only pattern is matched against: the name, the path, and the
    path with '-' for '/' (so 'validation-*' picks V3's validation/… as it picks V5's
    validation-…)."""
    return (Path(path).name, path, path.replace("/", "-"))


def matches(path: str, only: tuple[str, ...]) -> bool:
    return not only or any(fnmatch.fnmatch(n.lower(), pat.lower()) for pat in only for n in _names(path))


def _hits(rel: str, pattern: str) -> bool:
    """A file, or (for an archive) one of its members, matches the pattern."""
    return any(matches(p, (pattern,)) for p in (rel, *MEMBERS.get(Path(rel).name, ())))


@dataclass(frozen=True)
class Pick:
    group: Group
    rel: str
    members: tuple[str, ...] = ()  # for an archive picked by a member's name: the patterns its members must match

    @property
    def name(self) -> str:
        return Path(self.rel).name


def groups_of(version: str) -> tuple[Group, ...]:
    if version not in GROUPS:
        raise ConfigError(f"unknown version {version!r}; known: {', '.join(VERSIONS)}")
    return GROUPS[version]


def select(version: str, only: tuple[str, ...]) -> list[Pick]:
    """The files to fetch, each once, in the table's order. Without `only`, the default
    groups. A word of `only` that is a group's name picks the group; any other is a glob
    on the file names. A glob reaches the groups fetched only when asked (masks,
    narrative traces: GBs) only when it matches nothing in the default ones, so
    'validation-*' never starts the mask zips, while 'validation-masks-*' picks them."""
    groups = groups_of(version)
    by_name = {g.name: g for g in groups}
    named = {w.lower() for w in only if w.lower() in by_name}
    patterns = tuple(w for w in only if w.lower() not in by_name)
    reaching = {p: not any(_hits(f, p) for g in groups if g.default for f in g.files) for p in patterns}
    picks: dict[str, Pick] = {}
    for g in groups:
        for rel in g.files:
            if rel in picks:
                continue
            if (not only and g.default) or g.name in named:
                picks[rel] = Pick(g, rel)
                continue
            hit = tuple(p for p in patterns if (g.default or reaching[p]) and _hits(rel, p))
            if hit:
                # An archive unpacks whole when its own name was asked for, else the members asked for.
                picks[rel] = Pick(g, rel, () if matches(rel, hit) else patterns)
    if not picks:
        known = [n for g in groups if g.default for f in g.files for n in (Path(f).name, *MEMBERS.get(Path(f).name, ()))]
        raise ConfigError(f"no {version} file matches {', '.join(only)}; groups: {', '.join(by_name)}; "
                          f"files: {', '.join(dict.fromkeys(known))} (--list shows every group's files)")
    return list(picks.values())


def select_files(version: str, only: tuple[str, ...]) -> list[str]:
    """The picked files' paths (relative to their host's base URL)."""
    return [p.rel for p in select(version, only)]


def listing(version: str, only: tuple[str, ...], base_url: str = BASE_URL,
            narratives_base_url: str | None = None) -> list[str]:
    """`metadata --list`: a `# group` line (what it is; whether it is fetched by default)
    above its files' URLs, each followed by its published size when known. Without
    `only`, every group, those fetched only when asked too; with it, what it picks."""
    bases = base_urls(base_url, narratives_base_url)
    rows = select(version, only) if only else [Pick(g, f) for g in groups_of(version) for f in g.files]
    lines: list[str] = []
    group: Group | None = None
    for p in rows:
        if p.group is not group:
            group = p.group
            when = "default" if group.default else f"only when asked: --only {group.name}"
            lines.append(f"# {group.name} ({when}): {group.about}")
        size = APPROX_SIZES.get(p.rel)
        lines.append(bases[group.host] + p.rel + (f"  # {size}" if size else ""))
    return lines
