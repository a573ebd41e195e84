"""`oidownload gallery`: a static, offline HTML gallery of a download, with the boxes
drawn and the dataset's statistics. `build_gallery` is the entry point (see build.py)."""

from oidownload.gallery.build import ClassTree, GalleryResult, build_gallery

__all__ = ["ClassTree", "GalleryResult", "build_gallery"]
