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
# relationships and points (issue 23)
@opt("--relationship", "relationships", scope="annotations", multiple=True,
     help="Only relationships like this, 'SUBJECT PREDICATE OBJECT' (names or MIDs, * for any side); repeatable.")
@opt("--predicate", "predicates", scope="annotations", multiple=True,
     help="Only relationships of this predicate; repeatable.")
@opt("--attributes", "attributes_file", scope="annotations", type=click.Path(path_type=Path, dir_okay=False),
     help="oidv6-attributes-description.csv: the names of the right side of 'is' [default: the database's].")
@opt("-d", "--dest", scope="annotations", type=FOLDER,
     help="Output folder [default: OUT/annotations].")
@opt("--images", "image_lists", scope="annotations", multiple=True, type=click.Path(path_type=Path, dir_okay=False),
     help="Image lists (CSV) for the credits (attribution, coco, hf) [default: the download's inputs; give them "
          "when the download read a pipe].")
@opt("--with-narrative", scope="annotations", is_flag=True, default=False,
     help="Only the downloaded images with a localized narrative (a narratives .jsonl among the annotations).")
@opt("--narrative-contains", "narrative_words", scope="annotations", multiple=True,
     help="Only the downloaded images with a narrative holding this word (whole words, any case; repeatable: all).")
@opt("--narrative-traces", scope="annotations", is_flag=True, default=False,
     help="Localized narratives: keep each one's mouse trace, in the written frame (coco: captions.json in pixels; "
          "csv: a Traces column). Needs the full narratives files, or a --db loaded with --narrative-traces.")
@state_dir_option
@boundary
def annotations_cmd(out: str, fmt: str, annotation_files: tuple[Path, ...], db: str | None,
                    class_descriptions: Path | None, class_names: tuple[str, ...], hierarchy: Path | None,
                    with_parts: bool, relationships: tuple[str, ...], predicates: tuple[str, ...],
                    attributes_file: Path | None, dest: Path | None, image_lists: tuple[Path, ...],
                    with_narrative: bool, narrative_words: tuple[str, ...], narrative_traces: bool,
                    state_dir: Path | None) -> int:
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
    webdataset: into OUT's own shards (download --output-format webdataset):
          <ImageID>.txt the first caption, and captions, relationships, points
          and objects in each <ImageID>.json; the shards that change are
          rewritten whole (not in DEST)

    With segmentation annotations (…-object-segmentation.csv) and the masks in OUT:
    coco and hf add each mask, csv copies the rows, yolo-seg writes the polygons.

    Widths and heights come from the journal (after resizing and turning). yolo and hf
    need the files output in a local folder, webdataset the shards in one.
    """
    res = run_annotations(out, fmt, annotation_files, db, class_descriptions, class_names, hierarchy, with_parts,
                          dest, image_lists, state_dir, narrative_traces=narrative_traces,
                          with_narrative=with_narrative, narrative_words=narrative_words,
                          relationships=relationships, predicates=predicates, attributes=attributes_file)
    if fmt == "attribution":
        click.echo(f"{res.images} images credited -> {res.dest}", err=True)
    else:
        click.echo(
            f"{res.images} images, {res.boxes} boxes, {res.labels} labels"
            + (f", {res.relationships} relationships" if res.relationships else "")
            + (f", {res.points} points" if res.points else "")
            + (f", {res.masks} masks" if res.masks else "")
            + (f", {res.dropped} boxes outside a crop dropped" if res.dropped else "")
            + (f", {res.captions} captions" if res.captions else "")  # narratives (issue 23)
            + f" -> {res.dest}",
            err=True,
        )
    for note in res.notes:
        click.echo(f"oidownload: note: {note}", err=True)
    for f in res.files:
        click.echo(str(f))
    return ExitCode.OK
