"""A written mask's pixels → the shapes the exports write: COCO's compressed RLE, the
mask's own box and area, and its outer contours as polygons (one polygon an instance,
pieces joined the way Ultralytics' COCO converter joins them).

Pure Python on Pillow's bytes: the scans (`bytes.find`, `getbbox`, `count`) run in C,
and the contour tracer visits border pixels only, so no numpy or OpenCV is needed.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image

Point = tuple[int, int]
# The 8 neighbours, clockwise on screen (y grows downwards): E, SE, S, SW, W, NW, N, NE.
_DIRS: tuple[Point, ...] = ((1, 0), (1, 1), (0, 1), (-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1))
_DIR_OF = {d: k for k, d in enumerate(_DIRS)}
_W = 4


@dataclass(frozen=True, slots=True)
class Bitmap:
    """A binary mask, one byte a pixel (1 inside, 0 outside), row-major."""

    width: int
    height: int
    data: bytes

    @classmethod
    def from_png(cls, data: bytes) -> Bitmap:
        """Any PNG Pillow reads (a written mask is mode "1"); nonzero is inside.
        Raises OSError or ValueError for bytes that are not such an image."""
        with Image.open(io.BytesIO(data)) as im:
            grey = im.convert("L")
        return cls.of(grey)

    @classmethod
    def of(cls, grey: Image.Image) -> Bitmap:
        return cls(grey.width, grey.height, grey.point(lambda v: 1 if v else 0).tobytes())

    def image(self) -> Image.Image:
        """Mode "L", 0 and 1."""
        return Image.frombytes("L", (self.width, self.height), self.data)

    def area(self) -> int:
        return self.data.count(1)

    def bbox(self) -> tuple[int, int, int, int] | None:
        """(left, top, right, bottom), right and bottom exclusive; None when empty."""
        return self.image().getbbox()

    def column_major(self) -> bytes:
        return self.image().transpose(Image.Transpose.TRANSPOSE).tobytes()


def runs(flat: bytes) -> list[int]:
    """Alternating run lengths of 0s and 1s, starting with 0s (COCO's uncompressed RLE)."""
    counts: list[int] = []
    pos, n, look = 0, len(flat), b"\x01"
    while pos < n:
        nxt = flat.find(look, pos)
        if nxt < 0:
            nxt = n
        counts.append(nxt - pos)
        pos = nxt
        look = b"\x00" if look == b"\x01" else b"\x01"
    return counts or [0]


def rle_string(counts: list[int]) -> str:
    """COCO's compressed RLE text (pycocotools' rleToString): each count from the third
    on as the difference to the one two before, in 5-bit groups with a continuation bit,
    offset into printable ASCII from '0'."""
    out: list[str] = []
    for i, count in enumerate(counts):
        x = count - counts[i - 2] if i > 2 else count
        more = True
        while more:
            c = x & 0x1F
            x >>= 5  # arithmetic shift: a negative difference ends on -1
            more = x != -1 if c & 0x10 else x != 0
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


def coco_rle(bitmap: Bitmap) -> dict[str, object]:
    """{"size": [height, width], "counts": str}, as pycocotools.mask.encode gives it."""
    return {"size": [bitmap.height, bitmap.width], "counts": rle_string(runs(bitmap.column_major()))}


# -- contours --------------------------------------------------------------------------------------


def _row_runs(bitmap: Bitmap) -> list[list[tuple[int, int]]]:
    """Per row, the [x0, x1) runs of 1s."""
    w, data = bitmap.width, bitmap.data
    out: list[list[tuple[int, int]]] = []
    for y in range(bitmap.height):
        row: list[tuple[int, int]] = []
        pos, end = y * w, (y + 1) * w
        while pos < end:
            a = data.find(1, pos, end)
            if a < 0:
                break
            b = data.find(0, a, end)
            b = end if b < 0 else b
            row.append((a - y * w, b - y * w))
            pos = b
        out.append(row)
    return out


def _starts(bitmap: Bitmap) -> list[Point]:
    """The first pixel (raster order) of each 8-connected piece: runs of adjacent rows
    that touch, diagonally included, are one piece (union-find over runs)."""
    rows = _row_runs(bitmap)
    parent: list[int] = []
    ids: list[list[int]] = []

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for y, row in enumerate(rows):
        mine = []
        above = rows[y - 1] if y else []
        above_ids = ids[y - 1] if y else []
        for x0, x1 in row:
            k = len(parent)
            parent.append(k)
            mine.append(k)
            for (a0, a1), j in zip(above, above_ids, strict=True):
                if a0 <= x1 and x0 <= a1:  # overlapping or diagonal neighbours
                    ra, rb = find(j), find(k)
                    if ra != rb:
                        parent[max(ra, rb)] = min(ra, rb)
        ids.append(mine)
    starts: dict[int, Point] = {}
    for y, row in enumerate(rows):
        for (x0, _), k in zip(row, ids[y], strict=True):
            starts.setdefault(find(k), (x0, y))
    return list(starts.values())


def _trace(bitmap: Bitmap, sx: int, sy: int) -> list[Point]:
    """The outer border of the piece whose first pixel (raster order) is (sx, sy), by
    Suzuki and Abe's border following (as OpenCV's findContours): pixel centres."""
    w, h, data = bitmap.width, bitmap.height, bitmap.data

    def inside(x: int, y: int) -> bool:
        return 0 <= x < w and 0 <= y < h and data[y * w + x] == 1

    # Everything left of and above the first pixel is outside: from W, clockwise, the
    # first pixel inside is the one the border reaches the start from.
    for k in range(8):
        dx, dy = _DIRS[(_W + k) % 8]
        if inside(sx + dx, sy + dy):
            first = (sx + dx, sy + dy)
            break
    else:
        return [(sx, sy)]  # a lone pixel
    prev, cur = first, (sx, sy)
    points: list[Point] = []
    while True:
        d = _DIR_OF[(prev[0] - cur[0], prev[1] - cur[1])]
        for k in range(1, 9):  # counter-clockwise from the one after prev
            dx, dy = _DIRS[(d - k) % 8]
            nxt = (cur[0] + dx, cur[1] + dy)
            if inside(*nxt):
                break
        points.append(cur)
        if nxt == (sx, sy) and cur == first:
            return points
        prev, cur = cur, nxt


def _simplify(points: list[Point]) -> list[Point]:
    """Only the corners: a point between two equal steps is dropped (CHAIN_APPROX_SIMPLE)."""
    n = len(points)
    if n < 3:
        return points
    out = []
    for i, (x, y) in enumerate(points):
        px, py = points[i - 1]
        nx, ny = points[(i + 1) % n]
        if (x - px, y - py) != (nx - x, ny - y):
            out.append((x, y))
    return out or points[:1]


def _inside_polygon(x: float, y: float, poly: list[Point]) -> bool:
    """Even-odd ray casting."""
    hit = False
    n = len(poly)
    for i in range(n):
        (x1, y1), (x2, y2) = poly[i], poly[(i + 1) % n]
        if (y1 > y) != (y2 > y) and x < x1 + (y - y1) * (x2 - x1) / (y2 - y1):
            hit = not hit
    return hit


def outer_contours(bitmap: Bitmap) -> list[list[Point]]:
    """The outer contour of each piece, corners only, in raster order of the pieces. A
    piece inside another's hole is left out, as OpenCV's RETR_EXTERNAL leaves it."""
    found = [(_simplify(_trace(bitmap, x, y)), (x, y)) for x, y in _starts(bitmap)]
    return [c for c, (x, y) in found
            if not any(o is not c and len(o) >= 3 and _inside_polygon(x, y, o) for o, _ in found)]


def _closest(a: list[Point], b: list[Point]) -> tuple[int, int]:
    best, at = -1, (0, 0)
    for i, (ax, ay) in enumerate(a):
        for j, (bx, by) in enumerate(b):
            d = (ax - bx) ** 2 + (ay - by) ** 2
            if best < 0 or d < best:
                best, at = d, (i, j)
    return at


def joined(pieces: list[list[Point]]) -> list[Point]:
    """Several closed contours as one polygon, as Ultralytics' converter joins them
    (merge_multi_segment): each piece is linked to the next at their closest points, by
    a line walked there and back, so the pieces keep their area and the links add none.
    The walk goes round the first piece, out along the chain through one side of each
    middle piece, round the last, and back through the other side of each."""
    if len(pieces) == 1:
        return pieces[0]
    links = [_closest(pieces[i], pieces[i + 1]) for i in range(len(pieces) - 1)]
    entry = [0] + [j for _, j in links]  # where the walk enters each piece
    exit_ = [i for i, _ in links] + [0]  # where it leaves for the next

    def arc(p: list[Point], a: int, b: int) -> list[Point]:
        """p from index a forward (wrapping) to index b, both included."""
        return p[a:b + 1] if a <= b else p[a:] + p[:b + 1]

    def loop(p: list[Point], a: int) -> list[Point]:
        """Once round p from index a, back to a."""
        return [*arc(p, a, a - 1), p[a]]

    out = loop(pieces[0], exit_[0])
    for k in range(1, len(pieces) - 1):
        out += arc(pieces[k], entry[k], exit_[k])
    out += loop(pieces[-1], entry[-1])
    for k in range(len(pieces) - 2, 0, -1):
        # The rest of its loop; all of it when the walk left where it entered.
        out += arc(pieces[k], exit_[k], entry[k]) if exit_[k] != entry[k] else loop(pieces[k], entry[k])
    return out


def polygon(bitmap: Bitmap) -> list[Point] | None:
    """One polygon for the instance in pixel coordinates: its pieces of 3 or more
    corners, joined; the mask's box as a rectangle when no piece has 3 (Ultralytics
    does the same for an annotation without a usable polygon); None when empty."""
    pieces = [c for c in outer_contours(bitmap) if len(c) >= 3]
    if pieces:
        return joined(pieces)
    box = bitmap.bbox()
    if box is None:
        return None
    x0, y0, x1, y1 = box
    return [(x0, y0), (x1 - 1, y0), (x1 - 1, y1 - 1), (x0, y1 - 1)]
