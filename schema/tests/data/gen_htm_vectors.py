#!/usr/bin/env python3
"""Generate HTM envelope vectors with lsst.sphgeom, for tests/htm_conformance.rs.

Each output line is ``{"kind": ..., "level": L, "region": hex, "envelope": [pixels]}``:
``envelope`` is ``lsst.sphgeom.HtmPixelization(L).envelope(region)`` expanded to sorted pixel
indices, and ``region`` the polygon's ``encode().hex()``, as in messages.

Two sets, both deterministic for a seed:

- the extra set (the default): the cases where a pixelization is most likely to disagree with
  sphgeom: polar caps, RA = 0, polygons from arcseconds to 10 degrees, vertices and edges lying
  exactly on trixel edges and vertices (the root vertices, the equator and the x = 0 / y = 0
  meridians, and the exact vertices of deeper trixels), and levels other than 7. Committed as
  ``htm_extra_vectors.jsonl``;
- the sky set (``--sky N``): N ordinary level-7 sky polygons, mostly detector- and visit-sized,
  with a share of large ones, tiny ones and ones around the poles, across RA = 0, the equator and
  the x = 0 / y = 0 meridians. ``deploy/local/make_fixtures.py`` writes one at ``stack up``
  (``sphgeom/htm7_envelopes.jsonl`` of the fixtures); not committed.

Usage (needs ``lsst-sphgeom``, which the stack's ``.venv`` has):

    python gen_htm_vectors.py > htm_extra_vectors.jsonl
    python gen_htm_vectors.py --sky 3000 --seed 7 > fresh.jsonl

A seed other than the default draws a fresh set for a one-off soak test (run it with
``SPHGEOM_VECTORS=fresh.jsonl cargo test -p schema --test htm_conformance generated``).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys

import lsst.sphgeom as sg

U = sg.UnitVector3d
DEG = math.pi / 180.0
ARCSEC = DEG / 3600.0
# Vectors whose envelope is larger than this are skipped, to keep the committed file small.
MAX_PIXELS = 4000
DEFAULT_SEED = 20260501


class Vectors:
    """The vectors drawn so far, and the random stream that draws them (one stream, consumed in
    a fixed order, so a seed gives the same file on every machine)."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.out: list[dict] = []

    def emit(self, kind, level, poly):
        ranges = sg.HtmPixelization(level).envelope(poly).ranges()
        pixels = [p for begin, end in ranges for p in range(begin, end)]
        if not pixels or len(pixels) > MAX_PIXELS:
            return False
        self.out.append({"kind": kind, "level": level, "region": poly.encode().hex(), "envelope": pixels})
        return True

    def random_center(self, dec_range=(-90.0, 90.0)):
        lo, hi = (math.sin(d * DEG) for d in dec_range)
        return unit(self.rng.uniform(0.0, 360.0), math.asin(self.rng.uniform(lo, hi)) / DEG)

    def random_polygons(self, kind, count, side_deg, levels, dec_range=(-90.0, 90.0), sides=(4,)):
        rng = self.rng
        made = 0
        while made < count:
            poly = square(self.random_center(dec_range), side_deg * DEG, rng.uniform(0, 2 * math.pi)) \
                if sides == (4,) else regular(self.random_center(dec_range), side_deg * DEG / 2,
                                              rng.choice(sides), rng.uniform(0, 2 * math.pi))
            if poly is not None and self.emit(kind, rng.choice(levels), poly):
                made += 1

    def lines(self):
        return [json.dumps(record) + "\n" for record in self.out]


def unit(lon_deg, lat_deg):
    return U(sg.LonLat.fromDegrees(lon_deg, lat_deg))


def polygon(points):
    """sphgeom's convex hull of the points (as daf_butler's regions are made), or None."""
    try:
        return sg.ConvexPolygon(points)
    except Exception:
        return None


def frame(center):
    """East and north unit vectors at ``center`` (a tangent-plane frame)."""
    x, y, z = center.x(), center.y(), center.z()
    east = (-y, x, 0.0)
    if math.hypot(*east) < 1e-12:
        east = (0.0, 1.0, 0.0)
    n = math.hypot(*east)
    east = tuple(c / n for c in east)
    north = (y * east[2] - z * east[1], z * east[0] - x * east[2], x * east[1] - y * east[0])
    return east, north


def regular(center, radius_rad, n, rotation_rad):
    """An n-gon of circumradius ``radius_rad`` around ``center``, turned by ``rotation_rad``."""
    east, north = frame(center)
    t = math.tan(radius_rad)
    points = []
    for k in range(n):
        a = rotation_rad + 2.0 * math.pi * k / n
        dx, dy = t * math.cos(a), t * math.sin(a)
        points.append(U(center.x() + dx * east[0] + dy * north[0],
                        center.y() + dx * east[1] + dy * north[1],
                        center.z() + dx * east[2] + dy * north[2]))
    return polygon(points)


def square(center, side_rad, rotation_rad):
    return regular(center, side_rad / math.sqrt(2.0), 4, rotation_rad)


def on_equator(lon_deg):
    return U(math.cos(lon_deg * DEG), math.sin(lon_deg * DEG), 0.0)


def on_meridian_plane(axis, angle_deg):
    """A point with component ``axis`` exactly zero (on the x = 0 or y = 0 great circle)."""
    c, s = math.cos(angle_deg * DEG), math.sin(angle_deg * DEG)
    return U(0.0, c, s) if axis == "x" else U(c, 0.0, s)


def extra_vectors(seed: int = DEFAULT_SEED) -> Vectors:
    """The extra set (see the module's description)."""
    v = Vectors(seed)
    rng, emit = v.rng, v.emit

    # Sizes and orientations, mostly at level 7.
    v.random_polygons("detector", 120, 0.22, [7, 7, 7, 8, 10, 12])
    v.random_polygons("visit", 80, 3.5, [7, 7, 7, 3, 5, 8])
    v.random_polygons("visit_octagon", 20, 3.5, [7], sides=(6, 7, 8))
    v.random_polygons("ten_degree", 40, 10.0, [7, 0, 1, 3, 5])
    v.random_polygons("tiny_arcsec", 40, 1.0 / 3600.0, [7, 12, 16, 20])
    v.random_polygons("tiny_milliarcsec", 10, 0.005 / 3600.0, [20, 24])
    v.random_polygons("large", 10, 60.0, [0, 1, 3])

    # Polar caps: polygons around each pole, with and without a vertex exactly at it.
    for pole in (U.Z(), -U.Z()):
        name = "north" if pole.z() > 0 else "south"
        for _ in range(25):
            radius = rng.choice([0.1, 0.5, 1.75, 3.0, 10.0]) * DEG
            poly = regular(pole, radius, rng.choice([3, 4, 5, 8]), rng.uniform(0, 2 * math.pi))
            if poly is not None:
                emit(f"pole_cap_{name}", rng.choice([7, 7, 3, 10]), poly)
        for _ in range(10):
            # A vertex exactly at the pole (a root trixel vertex).
            sign = 1.0 if pole.z() > 0 else -1.0
            lon = rng.uniform(0, 360)
            width = rng.uniform(1, 30)
            poly = polygon([pole, unit(lon, sign * 85.0), unit(lon + width, sign * 85.0)])
            if poly is not None:
                emit(f"pole_vertex_{name}", 7, poly)
        # Near the pole but not covering it: edges cross many meridians close together.
        for _ in range(10):
            sign = 1.0 if pole.z() > 0 else -1.0
            poly = square(unit(rng.uniform(0, 360), sign * rng.uniform(86, 89.8)), 0.22 * DEG,
                          rng.uniform(0, 2 * math.pi))
            if poly is not None:
                emit(f"near_pole_{name}", 7, poly)

    # Straddling RA = 0 (the y = 0, x > 0 half-meridian is a root trixel edge).
    for _ in range(40):
        center = unit(rng.choice([rng.uniform(-0.1, 0.1), rng.uniform(-2, 2)]) % 360,
                      rng.uniform(-80, 80))
        side = rng.choice([0.22, 1.0, 3.5])
        poly = square(center, side * DEG, rng.uniform(0, 2 * math.pi))
        if poly is not None:
            emit("ra0", rng.choice([7, 7, 10]), poly)

    # Vertices exactly at root vertices, on the equator (z = 0) and on the x = 0 / y = 0
    # meridians: the great circles bounding the root trixels.
    axes = [U.X(), U.Y(), U.Z(), -U.X(), -U.Y(), -U.Z()]
    for a in axes:
        for b in axes:
            for c in axes:
                poly = polygon([a, b, c])
                if poly is not None and len(poly.getVertices()) == 3:
                    emit("root_octant", rng.choice([0, 1, 2]), poly)

    for _ in range(30):
        # Triangles and quads with an edge along the equator.
        lon = rng.uniform(0, 360)
        width = rng.choice([0.1, 0.22, 1.0, 3.5, 10.0])
        lat = rng.choice([-1, 1]) * width
        poly = polygon([on_equator(lon), on_equator(lon + width), unit(lon + width / 2, lat)])
        if poly is not None:
            emit("equator_edge", rng.choice([5, 7, 7, 10]), poly)
        poly = polygon([on_equator(lon), on_equator(lon + width),
                        unit(lon + width, lat), unit(lon, lat)])
        if poly is not None:
            emit("equator_quad", 7, poly)
        # Straddling the equator, vertices on both sides and one on it.
        poly = polygon([on_equator(lon), unit(lon + width, width / 2), unit(lon + width, -width / 2)])
        if poly is not None:
            emit("equator_vertex", 7, poly)
    for axis in ("x", "y"):
        for _ in range(15):
            angle = rng.uniform(-89, 89)
            width = rng.choice([0.22, 1.0, 3.5])
            a, b = on_meridian_plane(axis, angle), on_meridian_plane(axis, angle + width)
            mid = (a.x() + b.x(), a.y() + b.y(), a.z() + b.z())
            off = (width * DEG, 0.0, 0.0) if axis == "x" else (0.0, width * DEG, 0.0)
            sign = rng.choice([-1.0, 1.0])
            c = U(mid[0] + sign * off[0], mid[1] + sign * off[1], mid[2])
            poly = polygon([a, b, c])
            if poly is not None:
                emit(f"meridian_{axis}0_edge", rng.choice([7, 7, 10]), poly)

    # Trixels themselves, and polygons built from exact trixel vertices and edge midpoints.
    for _ in range(40):
        tl = rng.choice([2, 4, 5, 6, 7, 8])
        level = min(24, tl + rng.choice([0, 0, 1, 2, 3]))
        index = rng.randrange(8 * 4 ** tl, 16 * 4 ** tl)
        tri = sg.HtmPixelization.triangle(index)
        emit(f"trixel_L{tl}", level, tri)
        v0, v1, v2 = tri.getVertices()
        m01 = U(v0.x() + v1.x(), v0.y() + v1.y(), v0.z() + v1.z())
        m12 = U(v1.x() + v2.x(), v1.y() + v2.y(), v1.z() + v2.z())
        # Shares one edge (v0, v1) with the trixel, the third vertex outside it.
        outside = U(2 * m01.x() - v2.x(), 2 * m01.y() - v2.y(), 2 * m01.z() - v2.z())
        poly = polygon([v0, v1, outside])
        if poly is not None:
            emit(f"trixel_shared_edge_L{tl}", level, poly)
        # Vertices at a trixel vertex and two edge midpoints (the vertices of its child trixels).
        poly = polygon([v0, m01, m12])
        if poly is not None:
            emit(f"trixel_midpoints_L{tl}", level, poly)
        # A polygon whose edge runs along part of a trixel edge, vertices inside that edge.
        quarter = U(3 * v0.x() + v1.x(), 3 * v0.y() + v1.y(), 3 * v0.z() + v1.z())
        poly = polygon([quarter, m01, U(m01.x() - v2.x() * 0.01 + quarter.x() - v2.x() * 0.01,
                                        m01.y() - v2.y() * 0.01 + quarter.y() - v2.y() * 0.01,
                                        m01.z() - v2.z() * 0.01 + quarter.z() - v2.z() * 0.01)])
        if poly is not None:
            emit(f"trixel_edge_segment_L{tl}", level, poly)
        # A detector-sized square with a vertex exactly at the trixel vertex.
        poly = square(v0, 0.22 * DEG, rng.uniform(0, 2 * math.pi))
        if poly is not None:
            corners = list(poly.getVertices())
            corners[0] = v0
            poly = polygon(corners)
            if poly is not None:
                emit(f"vertex_at_trixel_vertex_L{tl}", level, poly)
    return v


# The sky set's mix, in shares of the total: half detector-sized, a third visit-sized (both the
# regions daf_butler overlaps with skypix at every ingest), the rest the places and sizes where
# envelopes are hardest.
SKY_MIX = (
    ("detector", 0.50),
    ("visit", 0.30),
    ("wrap", 1 / 30),
    ("big", 1 / 30),
    ("pole", 1 / 30),
    ("tiny", 1 / 30),
    ("meridian", 1 / 30),
)
# "equator" takes what the rounding of the others leaves.


def sky_vectors(count: int, seed: int = DEFAULT_SEED, level: int = 7) -> Vectors:
    """``count`` level-``level`` sky polygons (the sky set), kinds in the ``SKY_MIX`` shares."""
    v = Vectors(seed)
    rng = v.rng
    counts = {kind: int(count * share) for kind, share in SKY_MIX}
    counts["equator"] = count - sum(counts.values())

    def draw(kind, make):
        made = 0
        while made < counts[kind]:
            poly = make()
            if poly is not None and v.emit(kind, level, poly):
                made += 1

    turn = lambda: rng.uniform(0, 2 * math.pi)  # noqa: E731
    draw("detector", lambda: square(v.random_center(), rng.uniform(0.2, 0.24) * DEG, turn()))
    draw("visit", lambda: regular(v.random_center(), rng.uniform(1.7, 2.5) * DEG,
                                  rng.choice([4, 4, 4, 6, 8]), turn()))
    draw("wrap", lambda: square(unit(rng.uniform(-3, 3) % 360, rng.uniform(-85, 85)),
                                rng.choice([0.22, 1.0, 3.5]) * DEG, turn()))
    draw("big", lambda: regular(v.random_center(), rng.uniform(5, 12) * DEG,
                                rng.choice([3, 4, 5, 6, 8]), turn()))
    draw("pole", lambda: square(unit(rng.uniform(0, 360), rng.choice([-1, 1]) * rng.uniform(80, 90)),
                                rng.choice([0.22, 1.0, 3.5, 8.0]) * DEG, turn()))
    draw("tiny", lambda: square(v.random_center(), rng.uniform(0.5, 60) * ARCSEC, turn()))
    draw("meridian", lambda: square(unit(rng.choice([90.0, 180.0, 270.0]) + rng.uniform(-2, 2),
                                         rng.uniform(-85, 85)),
                                    rng.choice([0.22, 1.0, 3.5]) * DEG, turn()))
    draw("equator", lambda: square(unit(rng.uniform(0, 360), rng.uniform(-2, 2)),
                                   rng.choice([0.22, 1.0, 3.5]) * DEG, turn()))
    return v


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sky", type=int, metavar="N", help="N level-7 sky polygons instead of the extra set")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"random seed (default {DEFAULT_SEED})")
    parser.add_argument("legacy_seed", nargs="?", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    seed = args.legacy_seed if args.legacy_seed is not None else args.seed
    vectors = sky_vectors(args.sky, seed) if args.sky is not None else extra_vectors(seed)
    sys.stdout.writelines(vectors.lines())
    print(f"{len(vectors.out)} vectors", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
