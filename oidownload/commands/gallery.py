"""`oidownload gallery`: a static HTML gallery of the downloaded images."""

from __future__ import annotations

from pathlib import Path

import click

from oidownload.commands.group import boundary, main
from oidownload.commands.options import FOLDER, Int, choice_of, opt, state_dir_option
from oidownload.core.config import LogFormat, ProgressMode
from oidownload.core.errors import ConfigError
from oidownload.core.exits import ExitCode
from oidownload.core.options import MAX_PROCESSES
from oidownload.state.reader import StateDir, local_dest
from oidownload.state.remembered import RememberedSelection


@main.command("gallery")
@click.argument("out")
@opt("-o", "--output", "dest", scope="gallery", type=FOLDER, help="Folder for the gallery [default: OUT/gallery].")
@opt("--page-size", scope="gallery", type=Int(1, 5000), default=100, help="Images per page of the grid.")
@opt("--annotations", "annotation_files", scope="gallery", multiple=True, type=click.Path(path_type=Path, dir_okay=False),
     help="Box and image-label CSVs [default: those the download selected with].")
@opt("--class-descriptions", scope="gallery", type=click.Path(path_type=Path, dir_okay=False),
     help="For class names [default: the download's].")
@opt("--class", "class_names", scope="gallery", multiple=True,
     help="Draw only these classes (names or MIDs) [default: the download's].")
@opt("--all-classes", scope="gallery", is_flag=True, default=False,
     help="Draw every class's boxes, not only the download's classes.")
@opt("--images", "image_lists", scope="gallery", multiple=True, type=click.Path(path_type=Path, dir_okay=False),
     help="Image lists (CSV) for the attribution [default: the download's inputs].")
# README views: the hierarchy page's tree.
@opt("--hierarchy", scope="gallery", type=click.Path(path_type=Path, dir_okay=False),
     help="The class hierarchy (bbox_labels_600_hierarchy.json) for the hierarchy page.")
@opt("--db", scope="gallery", help="A database (`db load`) whose class hierarchy makes the hierarchy page "
     "[default: the download's, when it has one].")
@opt("--processes", scope="gallery", type=Int(1, MAX_PROCESSES), default=None,
     help="Worker processes for thumbnails and pages [default: one per usable CPU].")
@opt("--progress", "progress_mode", scope="gallery", type=choice_of(ProgressMode), default="auto",
     help="auto: a bar on a terminal, log lines otherwise.")
@state_dir_option
@boundary
def gallery_cmd(out: str, dest: Path | None, page_size: int, annotation_files: tuple[Path, ...],
                class_descriptions: Path | None, class_names: tuple[str, ...], all_classes: bool,
                image_lists: tuple[Path, ...], hierarchy: Path | None, db: str | None, processes: int | None,
                progress_mode: str, state_dir: Path | None) -> int:
    """A static HTML gallery of the images downloaded into OUT, with their boxes drawn,
    a page per image (boxes, labels, attribution) and the dataset's statistics.

    It works from disk (file://) with no server and no network: open DIR/index.html.
    Boxes are drawn in the frame of the written files, as the annotation exports are.
    """
    from oidownload.engine.progress import Progress
    from oidownload.gallery import build_gallery
    from oidownload.gallery.trees import class_tree

    if all_classes and class_names:
        raise ConfigError("--all-classes and --class contradict each other")
    dest = local_dest(out, dest, "-o/--output")
    state = StateDir.open(out, state_dir)
    files, descriptions, classes = remembered_annotations(state, annotation_files, class_descriptions, class_names)
    tree_notes: list[str] = []
    tree = class_tree(hierarchy, db, RememberedSelection.read(state).db, descriptions, tree_notes)
    progress = Progress(ProgressMode(progress_mode), LogFormat.TEXT, 5.0)
    res = build_gallery(
        state, dest, annotation_paths=files, class_descriptions=descriptions,
        classes=None if all_classes else classes, image_lists=list(image_lists) or None,
        page_size=page_size, processes=processes, progress=progress, hierarchy=tree,
    )
    for note in tree_notes + res.notes:
        click.echo(f"oidownload: {note}", err=True)
    for image_id, why in res.failed[:10]:
        click.echo(f"oidownload: warning: {image_id}: {why}", err=True)
    if len(res.failed) > 10:
        click.echo(f"oidownload: warning: {len(res.failed) - 10} more images without a thumbnail", err=True)
    click.echo(
        f"{res.images} images, {res.boxes} boxes of {res.classes} classes, {res.labels} labels"
        + (f", {res.masks} masks" if res.masks else "")
        + (f", {res.dropped} boxes outside a crop" if res.dropped else "") + f" -> {res.dest}",
        err=True,
    )
    click.echo(str(res.dest / "index.html"))
    return ExitCode.OK


def remembered_annotations(state: StateDir, annotation_files: tuple[Path, ...], class_descriptions: Path | None,
                           class_names: tuple[str, ...]) -> tuple[list[Path], Path | None, frozenset[str] | None]:
    """(annotation files, class descriptions, classes) as given, or else as the download
    into OUT selected with (its journal remembers them); classes None: every class."""
    from oidownload.dataset.classes import ClassDescriptions

    remembered = RememberedSelection.read(state)
    files = list(dict.fromkeys(annotation_files or remembered.annotations))
    descriptions = class_descriptions or remembered.class_descriptions
    classes = remembered.classes
    if class_names:
        if descriptions is None and any(not n.startswith("/") for n in class_names):
            raise ConfigError("class names need --class-descriptions")
        classes = frozenset(ClassDescriptions.load(descriptions).resolve(class_names) if descriptions
                            else class_names)
    return files, descriptions, classes
