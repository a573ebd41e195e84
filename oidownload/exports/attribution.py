"""`--format attribution`: ATTRIBUTION.csv and ATTRIBUTION.html, the credits of the
written images (dataset.attribution writes them); no annotations needed."""

from __future__ import annotations

from typing import Any, ClassVar

from oidownload.dataset.attribution import write_attribution
from oidownload.dataset.kinds import AnnotationKind
from oidownload.exports.base import WholeExport
from oidownload.inputs.text import STDIN, input_name, is_stream


class AttributionExporter(WholeExport):
    name: ClassVar[str] = "attribution"
    kinds: ClassVar[frozenset[AnnotationKind[Any]]] = frozenset()
    needs_annotations: ClassVar[bool] = False
    beside_images: ClassVar[bool] = False

    def finish(self) -> None:
        ctx, result = self.ctx, self.ctx.result
        credit = write_attribution(ctx.state, ctx.images, ctx.tree, ctx.image_lists)
        result.files += [credit.csv, credit.html]
        if credit.uncredited:
            piped = [input_name(i.display) for i in ctx.state.inputs()
                     if i.display == STDIN or i.display.startswith("/dev/fd/") or is_stream(i.path)]
            why = (f"they were read from {', '.join(piped)}, which is read once: save the same image list "
                   "to a file and pass it with --images FILE" if piped and ctx.image_lists is None
                   else "their input rows are gone (pass the image lists with --images)")
            result.notes.append(f"{credit.uncredited} images have no credit: {why} "
                                "(their ImageIDs are in ATTRIBUTION.csv with empty fields)")
