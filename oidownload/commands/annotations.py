"""`oidownload annotations`: the annotations of the downloaded images, in an export
format (runs.run_annotations)."""

from __future__ import annotations

from pathlib import Path

import click

from oidownload.commands.group import boundary, main
from oidownload.commands.options import FOLDER, opt, state_dir_option
from oidownload.core.exits import ExitCode
from oidownload.exports import EXPORTERS
from oidownload.runs import run_annotations


@main.command("annotations")
@click.argument("out")
@opt("--format", "fmt", scope="annotations", type=click.Choice(sorted(EXPORTERS)),
     default="coco", help="Output layout.")
@opt("--annotations", "annotation_files", scope="annotations", multiple=True,
     type=click.Path(path_type=Path, dir_okay=False),
     help="Box or label CSVs [default: those the download selected with].")
@opt("--db", scope="annotations", help="Export from this database instead of CSVs [default: the download's].")
@opt("--class-descriptions", scope="annotations", type=click.Path(path_type=Path, dir_okay=False),
     help="For category names [default: the download's, or the database's classes].")
@opt("--class", "class_names", scope="annotations", multiple=True,
     help="Only these classes (names or MIDs) [default: the download's].")
@opt("--hierarchy", scope="annotations", type=click.Path(path_type=Path, dir_okay=False),
     help="With --class: the classes' subcategories too (bbox_labels_600_hierarchy.json).")
@opt("--with-parts", scope="annotations", is_flag=True, default=False, help="With --hierarchy: their parts too.")
@opt("-d", "--dest", scope="annotations", type=FOLDER,
     help="Output folder [default: OUT/annotations].")
@opt("--images", "image_lists", scope="annotations", multiple=True, type=click.Path(path_type=Path, dir_okay=False),
     help="Image lists (CSV) for the credits (attribution, coco, hf) [default: the download's inputs; give them "
          "when the download read a pipe].")
@state_dir_option
@boundary
def annotations_cmd(out: str, fmt: str, annotation_files: tuple[Path, ...], db: str | None,
                    class_descriptions: Path | None, class_names: tuple[str, ...], hierarchy: Path | None,
                    with_parts: bool, dest: Path | None, image_lists: tuple[Path, ...], state_dir: Path | None) -> int:
    """Annotations of the images downloaded into OUT, in the frame of the written files.

    \b
    csv:  the Open Images rows, filtered
    coco: coco.json, file names relative to OUT, boxes in pixels (and as polygons),
          each image's licence, author and flickr_url
    yolo: DEST/yolo/ for Ultralytics: images/<split>/ (links to the files),
          labels/<split>/, data.yaml
    hf:   OUT/<subset>/metadata.jsonl for Hugging Face's imagefolder (not in DEST:
          it must sit beside the images)
    attribution: ATTRIBUTION.csv and ATTRIBUTION.html (credits, grouped by licence)
    yolo-seg: DEST/yolo-seg/ for Ultralytics' segment task: a polygon a mask

    With segmentation annotations (…-object-segmentation.csv) and the masks in OUT:
    coco and hf add each mask, csv copies the rows, yolo-seg writes the polygons.

    Widths and heights come from the journal (after resizing and turning). yolo and hf
    need the files output in a local folder.
    """
    res = run_annotations(out, fmt, annotation_files, db, class_descriptions, class_names, hierarchy, with_parts,
                          dest, image_lists, state_dir)
    if fmt == "attribution":
        click.echo(f"{res.images} images credited -> {res.dest}", err=True)
    else:
        click.echo(
            f"{res.images} images, {res.boxes} boxes, {res.labels} labels"
            + (f", {res.masks} masks" if res.masks else "")
            + (f", {res.dropped} boxes outside a crop dropped" if res.dropped else "")
            + f" -> {res.dest}",
            err=True,
        )
    for note in res.notes:
        click.echo(f"oidownload: note: {note}", err=True)
    for f in res.files:
        click.echo(str(f))
    return ExitCode.OK
