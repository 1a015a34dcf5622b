//! The HTM pixelization, and the envelope of a convex polygon pixel for pixel equal to
//! `lsst.sphgeom.HtmPixelization(level).envelope(polygon)`.
//!
//! daf_butler writes one `*_skypix_overlap` row per level-7 pixel of that envelope
//! (`../shared/reference/butler-registry.md`, §1 and the `visit_skypix_overlap` table), so the
//! pixel set must be sphgeom's exactly: a missing pixel hides data from spatial queries, an extra one
//! is a row daf_butler would not have written. A textbook "does this triangle touch this polygon"
//! test is not enough; this module reproduces what sphgeom decides, including on boundaries:
//!
//! - **Indices.** Level-L pixels are `[8·4^L, 16·4^L)`: the root triangles S0–S3, N0–N3 are 8–15
//!   and child `k` of pixel `i` is `4i + k`.
//! - **Trixels.** The root vertices are the six points ±x, ±y, ±z, in sphgeom's order (which
//!   is the HTM standard). A trixel `(v0, v1, v2)` is split at the midpoints
//!   `m0 = |v1 + v2|`, `m1 = |v2 + v0|`, `m2 = |v0 + v1|`, normalized with sphgeom's own scaling
//!   ([`UnitVector3d::normalized`]) so every vertex is bit-identical to sphgeom's; the children are
//!   `(v0, m2, m1)`, `(v1, m0, m2)`, `(v2, m1, m0)`, `(m0, m1, m2)`.
//! - **Traversal.** Depth first, children in index order. A trixel disjoint from the polygon is
//!   dropped; one within it contributes all its level-L descendants; otherwise it is subdivided,
//!   or kept if it is already at level L. (sphgeom's `maxRanges` coarsening is off by default,
//!   and daf_butler uses the default.)
//! - **The relation test** is sphgeom's convex-polygon-against-convex-polygon test, which works
//!   on vertices and edges only: *within* if all three trixel vertices are in the (closed) polygon;
//!   *intersects* if some trixel vertex is in the polygon or some polygon vertex is in the (closed)
//!   trixel, or if a trixel edge and a polygon edge cross properly (all four orientations non-zero
//!   and consistent); *disjoint* otherwise. So a polygon that only touches a trixel's edge without
//!   a vertex on it, or whose edge runs along a trixel edge, is judged by those rules, not by
//!   set intersection.
//! - **Orientation** of three points is the sign of the 3×3 determinant of their components,
//!   computed exactly: sphgeom evaluates it in floating point, trusts it beyond an error bound, and
//!   otherwise falls back to exact big-integer arithmetic. We do the same, with our own exact
//!   fallback (`exact_orientation`), so every sign agrees with sphgeom's.

use std::ops::Range;

use crate::region::{ConvexPolygon, UnitVector3d};

/// The finest HTM level sphgeom supports (`HtmPixelization::MAX_LEVEL`).
pub const MAX_LEVEL: u32 = 24;

/// An HTM pixelization that cannot be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HtmError {
    /// The level is above [`MAX_LEVEL`].
    #[error("HTM level {level} is out of range 0..={MAX_LEVEL}")]
    InvalidLevel {
        /// The level asked for.
        level: u32,
    },
}

/// The HTM pixelization at one subdivision level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HtmPixelization {
    level: u32,
}

impl HtmPixelization {
    /// The pixelization at `level` (0 to [`MAX_LEVEL`]).
    pub fn new(level: u32) -> Result<Self, HtmError> {
        if level > MAX_LEVEL {
            return Err(HtmError::InvalidLevel { level });
        }
        Ok(Self { level })
    }

    /// The subdivision level.
    pub fn level(&self) -> u32 {
        self.level
    }

    /// All pixel indices at this level: `[8·4^L, 16·4^L)`.
    pub fn universe(&self) -> Range<u64> {
        (8 << (2 * self.level))..(16 << (2 * self.level))
    }

    /// The pixels of this level that sphgeom's `envelope()` returns for `polygon`, sorted and
    /// distinct.
    ///
    /// At fine levels a large polygon covers very many pixels (a 3.5° visit has ~10⁹ level-20
    /// pixels); use [`HtmPixelization::envelope_ranges`] there.
    pub fn envelope(&self, polygon: &ConvexPolygon) -> Vec<u64> {
        let mut pixels = Vec::new();
        self.envelope_into(polygon, &mut pixels);
        pixels
    }

    /// [`HtmPixelization::envelope`] into a caller's buffer (cleared first), so a writer computing
    /// envelopes for every detector of a visit can reuse one allocation.
    pub fn envelope_into(&self, polygon: &ConvexPolygon, pixels: &mut Vec<u64>) {
        pixels.clear();
        self.find(polygon, |range| pixels.extend(range));
    }

    /// The envelope as sorted, disjoint, non-adjacent half-open ranges: sphgeom's
    /// `RangeSet.ranges()`.
    pub fn envelope_ranges(&self, polygon: &ConvexPolygon) -> Vec<Range<u64>> {
        let mut ranges: Vec<Range<u64>> = Vec::new();
        self.find(polygon, |range| match ranges.last_mut() {
            // Pixels arrive in increasing order, so merging with the last range is enough.
            Some(last) if last.end == range.start => last.end = range.end,
            _ => ranges.push(range),
        });
        ranges
    }

    /// Walks the trixel tree, calling `emit` with each range of level-L pixels in increasing order.
    fn find(&self, polygon: &ConvexPolygon, emit: impl FnMut(Range<u64>)) {
        let vertices = polygon.vertices();
        // Detector and visit polygons have 4 to 8 vertices: keep their edges on the stack.
        let mut inline = [PolygonEdge::UNSET; INLINE_EDGES];
        let mut heap = Vec::new();
        let edges: &mut [PolygonEdge] = match inline.get_mut(..vertices.len()) {
            Some(edges) => edges,
            None => {
                heap.resize(vertices.len(), PolygonEdge::UNSET);
                &mut heap
            }
        };
        // Edge i runs from vertex i-1 to vertex i, the order sphgeom walks a polygon's edges in.
        let previous = vertices
            .iter()
            .cycle()
            .skip(vertices.len().saturating_sub(1));
        for ((edge, &end), &start) in edges.iter_mut().zip(vertices).zip(previous) {
            *edge = PolygonEdge::new(start, end);
        }
        let mut finder = Finder {
            edges,
            level: self.level,
            emit,
        };
        for (root, vertices) in (8_u64..).zip(ROOT_TRIXELS) {
            finder.visit(vertices, root, 0);
        }
    }
}

/// How many polygon edges fit in the traversal's stack buffer before it allocates.
const INLINE_EDGES: usize = 16;

const NEG_X: UnitVector3d = UnitVector3d::from_normalized(-1.0, -0.0, -0.0);
const NEG_Y: UnitVector3d = UnitVector3d::from_normalized(-0.0, -1.0, -0.0);
const NEG_Z: UnitVector3d = UnitVector3d::from_normalized(-0.0, -0.0, -1.0);
const X: UnitVector3d = UnitVector3d::X;
const Y: UnitVector3d = UnitVector3d::Y;
const Z: UnitVector3d = UnitVector3d::Z;

/// The root trixels S0, S1, S2, S3, N0, N1, N2, N3 (indices 8 to 15), each counter-clockwise.
/// These are the standard HTM root triangles, with the vertex order sphgeom uses (the order decides
/// which child is which). The negated axes carry negative zeros as sphgeom's `-UnitVector3d::Z()`
/// does; the sign of a zero never changes a predicate, but it keeps the midpoints bit-identical.
const ROOT_TRIXELS: [[UnitVector3d; 3]; 8] = [
    [X, NEG_Z, Y],
    [Y, NEG_Z, NEG_X],
    [NEG_X, NEG_Z, NEG_Y],
    [NEG_Y, NEG_Z, X],
    [X, Z, NEG_Y],
    [NEG_Y, Z, NEG_X],
    [NEG_X, Z, Y],
    [Y, Z, X],
];

/// What the traversal needs to know about a trixel and the polygon (sphgeom's `Relationship`,
/// reduced to the bits its pixel finder reads).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Relation {
    Disjoint,
    Intersects,
    /// The trixel is inside the polygon.
    Within,
}

/// The depth-first walk over the trixel tree.
struct Finder<'a, F> {
    edges: &'a mut [PolygonEdge],
    level: u32,
    emit: F,
}

impl<F: FnMut(Range<u64>)> Finder<'_, F> {
    fn visit(&mut self, trixel: [UnitVector3d; 3], index: u64, level: u32) {
        match relate(&trixel, self.edges) {
            Relation::Disjoint => {}
            Relation::Within => self.emit_descendants(index, level),
            Relation::Intersects if level >= self.level => self.emit_descendants(index, level),
            Relation::Intersects => self.subdivide(trixel, index, level),
        }
    }

    /// Emits the level-L pixels under pixel `index` of level `level`.
    fn emit_descendants(&mut self, index: u64, level: u32) {
        let shift = 2 * self.level.saturating_sub(level);
        (self.emit)((index << shift)..((index + 1) << shift));
    }

    fn subdivide(&mut self, [v0, v1, v2]: [UnitVector3d; 3], index: u64, level: u32) {
        let m0 = midpoint(v1, v2);
        let m1 = midpoint(v2, v0);
        let m2 = midpoint(v0, v1);
        let child = index * 4;
        let level = level + 1;
        self.visit([v0, m2, m1], child, level);
        self.visit([v1, m0, m2], child + 1, level);
        self.visit([v2, m1, m0], child + 2, level);
        self.visit([m0, m1, m2], child + 3, level);
    }
}

/// sphgeom's `UnitVector3d(a + b)`: the normalized sum, bit for bit.
fn midpoint(a: UnitVector3d, b: UnitVector3d) -> UnitVector3d {
    // Two vertices of a trixel are never antipodal, so the sum is never zero and normalizing
    // cannot fail; falling back to `a` only keeps this panic-free.
    UnitVector3d::normalized(a.x() + b.x(), a.y() + b.y(), a.z() + b.z()).unwrap_or(a)
}

/// sphgeom's relation between a trixel and the polygon (see the module documentation).
///
/// Every orientation it needs is the side of a point relative to a polygon edge or a trixel edge,
/// so each is computed once per trixel and the edge-crossing test reuses them. sphgeom computes
/// the same predicates in another order and without reuse; since each is an exact sign, the order
/// cannot change the outcome.
fn relate(trixel: &[UnitVector3d; 3], edges: &mut [PolygonEdge]) -> Relation {
    // Trixel vertices against the polygon's edges: sphgeom's `contains(polygon, v)` is
    // "orientation(v, start, end) >= 0 for every edge", so boundary points are inside.
    let mut trixel_vertex_inside = [true; 3];
    for edge in edges.iter_mut() {
        for ((side, &vertex), inside) in edge
            .trixel_sides
            .iter_mut()
            .zip(trixel)
            .zip(&mut trixel_vertex_inside)
        {
            *side = edge.plane.side(vertex);
            *inside &= *side >= 0;
        }
    }
    if trixel_vertex_inside.iter().all(|&inside| inside) {
        return Relation::Within;
    }
    if trixel_vertex_inside.iter().any(|&inside| inside) {
        return Relation::Intersects;
    }

    // Polygon vertices against the trixel's edges (t0→t1, t1→t2, t2→t0).
    let [t0, t1, t2] = *trixel;
    let trixel_planes = [Plane::new(t0, t1), Plane::new(t1, t2), Plane::new(t2, t0)];
    let mut any_polygon_vertex_inside = false;
    for edge in edges.iter_mut() {
        let mut inside = true;
        for (side, plane) in edge.end_sides.iter_mut().zip(&trixel_planes) {
            *side = plane.side(edge.end);
            inside &= *side >= 0;
        }
        any_polygon_vertex_inside |= inside;
    }
    if any_polygon_vertex_inside {
        return Relation::Intersects;
    }

    // No vertex of either is inside the other: they meet only if two edges cross. For trixel edge
    // (a, b) and polygon edge (c, d), sphgeom requires orientation(a, c, d) = orientation(b, d, c)
    // = orientation(c, b, a) = orientation(d, a, b) ≠ 0. Swapping two arguments negates an
    // orientation, which turns each of these into a side computed above.
    let count = edges.len();
    for (k, next) in [(0, 1), (1, 2), (2, 0)] {
        for (i, edge) in edges.iter().enumerate() {
            // The side of c (the start of edge i) is stored with edge i-1, which ends there.
            let Some(previous) = edges.get((i + count - 1) % count) else {
                continue;
            };
            let (Some(&acd), Some(&b_cd), Some(&c_ab), Some(&dab)) = (
                edge.trixel_sides.get(k),
                edge.trixel_sides.get(next),
                previous.end_sides.get(k),
                edge.end_sides.get(k),
            ) else {
                continue;
            };
            let bdc = -b_cd;
            if acd != 0 && acd == bdc {
                let cba = -c_ab;
                if cba == dab && cba == acd {
                    return Relation::Intersects;
                }
            }
        }
    }
    Relation::Disjoint
}

/// One polygon edge, with the per-trixel scratch the relation test fills in.
#[derive(Debug, Clone, Copy)]
struct PolygonEdge {
    /// The vertex the edge ends at (it starts at the previous edge's `end`).
    end: UnitVector3d,
    /// orientation(·, start, end).
    plane: Plane,
    /// The orientation of each trixel vertex relative to this edge.
    trixel_sides: [i8; 3],
    /// The orientation of `end` relative to each trixel edge (t0→t1, t1→t2, t2→t0).
    end_sides: [i8; 3],
}

impl PolygonEdge {
    const UNSET: Self = Self {
        end: UnitVector3d::X,
        plane: Plane::new(UnitVector3d::X, UnitVector3d::X),
        trixel_sides: [0; 3],
        end_sides: [0; 3],
    };

    fn new(start: UnitVector3d, end: UnitVector3d) -> Self {
        Self {
            end,
            plane: Plane::new(start, end),
            ..Self::UNSET
        }
    }
}

/// The oriented great circle through `b` then `c`, ready to answer `orientation(a, b, c)` for
/// any `a`.
///
/// The products and their differences are exactly the ones sphgeom's `orientation(a, b, c)`
/// computes (the components of b × c, and the sums of their absolute values for its error
/// bound), in the same order, so the floating-point determinant and the decision to trust it are
/// bit-identical to sphgeom's; only when it is not trusted do we go exact.
#[derive(Debug, Clone, Copy)]
struct Plane {
    b: UnitVector3d,
    c: UnitVector3d,
    /// b × c.
    normal: [f64; 3],
    /// |b_y c_z| + |b_z c_y|, and so on: each row of the permanent.
    abs_terms: [f64; 3],
}

/// sphgeom's bounds on the error of the floating-point determinant of three unit vectors:
/// an absolute bound valid for any unit vectors, a relative one (a little over 5ε) to multiply
/// by the permanent, and an allowance for underflow. They come from Shewchuk's analysis
/// ("Adaptive Precision Floating-Point Arithmetic and Fast Robust Geometric Predicates", 1997).
const MAX_ABSOLUTE_ERROR: f64 = 1.7e-15;
const RELATIVE_ERROR: f64 = 5.6e-16;
const MIN_ABSOLUTE_ERROR: f64 = 4.0e-307;

impl Plane {
    const fn new(b: UnitVector3d, c: UnitVector3d) -> Self {
        let (bx, by, bz) = (b.x(), b.y(), b.z());
        let (cx, cy, cz) = (c.x(), c.y(), c.z());
        let (bycz, bzcy) = (by * cz, bz * cy);
        let (bzcx, bxcz) = (bz * cx, bx * cz);
        let (bxcy, bycx) = (bx * cy, by * cx);
        Self {
            b,
            c,
            normal: [bycz - bzcy, bzcx - bxcz, bxcy - bycx],
            abs_terms: [
                bycz.abs() + bzcy.abs(),
                bzcx.abs() + bxcz.abs(),
                bxcy.abs() + bycx.abs(),
            ],
        }
    }

    /// `orientation(a, b, c)`: 1 if a, b, c turn counter-clockwise (a is left of b→c), -1 if
    /// clockwise, 0 if they lie on one great circle.
    fn side(&self, a: UnitVector3d) -> i8 {
        let [nx, ny, nz] = self.normal;
        let determinant = a.x() * nx + a.y() * ny + a.z() * nz;
        if determinant > MAX_ABSOLUTE_ERROR {
            return 1;
        }
        if determinant < -MAX_ABSOLUTE_ERROR {
            return -1;
        }
        let [px, py, pz] = self.abs_terms;
        let permanent = a.x().abs() * px + a.y().abs() * py + a.z().abs() * pz;
        let max_error = RELATIVE_ERROR * permanent + MIN_ABSOLUTE_ERROR;
        if determinant > max_error {
            return 1;
        }
        if determinant < -max_error {
            return -1;
        }
        let (b, c) = (self.b, self.c);
        // Two equal or antipodal rows make the determinant exactly zero: skip the slow path.
        if a == b || b == c || a == c || a == b.negated() || b == c.negated() || a == c.negated() {
            return 0;
        }
        exact_orientation(a, b, c)
    }
}

/// The exact sign of det[a; b; c], for any finite components.
///
/// Each of the six terms `±a_i·b_j·c_k` is an integer mantissa product (at most 159 bits) times a
/// power of two. Positive and negative terms are summed separately as wide integers, aligned on
/// the smallest exponent, and compared. The widest alignment (largest against smallest
/// exponent of a finite double, three times over) spans about 6,300 bits, hence the size of the
/// accumulators. This is only reached for nearly degenerate triples (points on or within ~1e-15 of
/// a great circle), which in practice means polygon vertices on trixel edges.
fn exact_orientation(a: UnitVector3d, b: UnitVector3d, c: UnitVector3d) -> i8 {
    let terms = [
        (a.x(), b.y(), c.z(), false),
        (a.x(), b.z(), c.y(), true),
        (a.y(), b.z(), c.x(), false),
        (a.y(), b.x(), c.z(), true),
        (a.z(), b.x(), c.y(), false),
        (a.z(), b.y(), c.x(), true),
    ];
    let products = terms.map(|(p, q, r, negated)| {
        let (p, q, r) = (split(p), split(q), split(r));
        ExactProduct {
            negative: negated ^ p.negative ^ q.negative ^ r.negative,
            magnitude: multiply(p.mantissa, q.mantissa, r.mantissa),
            exponent: p.exponent + q.exponent + r.exponent,
        }
    });
    let nonzero = || products.iter().filter(|p| p.magnitude != [0; 3]);
    let Some(min_exponent) = nonzero().map(|p| p.exponent).min() else {
        return 0;
    };
    let mut positive = [0_u64; EXACT_LIMBS];
    let mut negative = [0_u64; EXACT_LIMBS];
    for product in nonzero() {
        let accumulator = if product.negative {
            &mut negative
        } else {
            &mut positive
        };
        let shift = u32::try_from(product.exponent - min_exponent).unwrap_or(u32::MAX);
        add_shifted(accumulator, product.magnitude, shift);
    }
    // Compare the two sums from the most significant limb down.
    match positive.iter().rev().cmp(negative.iter().rev()) {
        std::cmp::Ordering::Greater => 1,
        std::cmp::Ordering::Less => -1,
        std::cmp::Ordering::Equal => 0,
    }
}

/// 64-bit limbs in each exact accumulator: enough for the 6,135-bit widest alignment plus a
/// 159-bit product and carries, with room to spare.
const EXACT_LIMBS: usize = 104;

/// A double as `(-1)^negative · mantissa · 2^exponent`.
struct SplitDouble {
    negative: bool,
    mantissa: u64,
    exponent: i32,
}

fn split(value: f64) -> SplitDouble {
    let bits = value.to_bits();
    let negative = bits >> 63 == 1;
    let biased = i32::try_from((bits >> 52) & 0x7ff).unwrap_or(0);
    let fraction = bits & ((1 << 52) - 1);
    if biased == 0 {
        // Zero or subnormal: no implicit leading bit.
        SplitDouble {
            negative,
            mantissa: fraction,
            exponent: -1074,
        }
    } else {
        SplitDouble {
            negative,
            mantissa: fraction | (1 << 52),
            exponent: biased - 1075,
        }
    }
}

/// One term of the determinant, exactly: `(-1)^negative · magnitude · 2^exponent`, the
/// magnitude as three little-endian 64-bit limbs.
struct ExactProduct {
    negative: bool,
    magnitude: [u64; 3],
    exponent: i32,
}

/// The exact product of three mantissas below 2^53, as three little-endian limbs.
fn multiply(p: u64, q: u64, r: u64) -> [u64; 3] {
    let pq = u128::from(p) * u128::from(q); // < 2^106
    let low = u128::from(pq as u64) * u128::from(r); // < 2^117
    let high = (pq >> 64) * u128::from(r); // < 2^95
    let middle = high + (low >> 64); // < 2^96
    [low as u64, middle as u64, (middle >> 64) as u64]
}

/// `accumulator += value << shift`, with carries.
fn add_shifted(accumulator: &mut [u64; EXACT_LIMBS], value: [u64; 3], shift: u32) {
    let bit = shift % 64;
    let Ok(first) = usize::try_from(shift / 64) else {
        return;
    };
    // The value shifted within a limb: four limbs, the last holding the bits pushed out of the top.
    let mut shifted = [0_u64; 4];
    let mut spill = 0_u64;
    for (out, limb) in shifted.iter_mut().zip(value.into_iter().chain([0])) {
        let wide = u128::from(limb) << bit;
        *out = (wide as u64) | spill;
        spill = (wide >> 64) as u64;
    }
    let mut carry = 0_u64;
    for (offset, slot) in accumulator.iter_mut().skip(first).enumerate() {
        let addend = shifted.get(offset).copied().unwrap_or(0);
        if addend == 0 && carry == 0 && offset >= shifted.len() {
            break;
        }
        let (sum, overflow_a) = slot.overflowing_add(addend);
        let (sum, overflow_b) = sum.overflowing_add(carry);
        *slot = sum;
        carry = u64::from(overflow_a || overflow_b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::region::Region;

    fn v(x: f64, y: f64, z: f64) -> UnitVector3d {
        UnitVector3d::from_normalized(x, y, z)
    }

    /// `orientation(a, b, c)` through the same path the envelope uses.
    fn orientation(a: UnitVector3d, b: UnitVector3d, c: UnitVector3d) -> i8 {
        Plane::new(b, c).side(a)
    }

    #[test]
    fn levels() {
        assert_eq!(
            HtmPixelization::new(25),
            Err(HtmError::InvalidLevel { level: 25 })
        );
        let htm = HtmPixelization::new(24).map(|h| (h.level(), h.universe()));
        assert_eq!(htm, Ok((24, (8 << 48)..(16 << 48))));
        assert_eq!(HtmPixelization::new(0).map(|h| h.universe()), Ok(8..16));
    }

    #[test]
    fn orientation_of_simple_triples() {
        assert_eq!(orientation(X, Y, Z), 1);
        assert_eq!(orientation(Y, X, Z), -1);
        // Coplanar (all on the equator): exactly zero, decided by the exact path.
        assert_eq!(orientation(X, Y, v(0.6, 0.8, 0.0)), 0);
        assert_eq!(exact_orientation(X, Y, v(0.6, 0.8, 0.0)), 0);
        assert_eq!(exact_orientation(X, Y, Z), 1);
        assert_eq!(exact_orientation(Z, Y, X), -1);
    }

    #[test]
    fn orientation_of_nearly_coplanar_triples_matches_sphgeom() {
        // Python: c is UnitVector3d(a + b), sometimes moved by one ulp in one component; the
        // expected sign is lsst.sphgeom.orientationExact(a, b, c).
        let cases = [
            (
                [
                    -0.8856872981832026,
                    0.1494960875638922,
                    -0.43955537721660043,
                ],
                [0.2239270468856166, 0.2709022899988522, -0.936199031694898],
                [
                    -0.41791907186293503,
                    0.26549267566192786,
                    -0.8688252347527051,
                ],
                1,
            ),
            (
                [
                    0.9896162938193701,
                    -0.07447849705675375,
                    0.12293308945675036,
                ],
                [-0.8127382154281622, 0.5725259831398565, 0.10803051333945879],
                [0.30666187810880113, 0.8634884484204297, 0.4004325061221452],
                1,
            ),
            (
                [
                    -0.22299743169558126,
                    0.7826439695565793,
                    -0.5811545081765216,
                ],
                [-0.6208995450148765, 0.7589495786413608, -0.1961613929406601],
                [
                    -0.43914311834838865,
                    0.8022071611398522,
                    -0.4044959730617752,
                ],
                -1,
            ),
            (
                [
                    -0.46594027489029793,
                    0.6258551786865427,
                    -0.6254637923544332,
                ],
                [0.5761592283937237, 0.6656329372491614, -0.4743135422753632],
                [0.06483916630774267, 0.7597514771452231, -0.6469726234456669],
                -1,
            ),
            (
                [0.4492684216042398, 0.7777423313324944, 0.43963024395818284],
                [0.797365390390261, -0.19889055183849308, 0.5697815218109188],
                [0.7310312197016752, 0.339441075894588, 0.5919232313543755],
                1,
            ),
            (
                [0.5723991041799908, -0.6081738422060519, -0.5499853117950263],
                [
                    -0.5159839453049508,
                    0.8486544033561514,
                    -0.11638845239864769,
                ],
                [
                    0.07938182446287897,
                    0.33838042952667835,
                    -0.9376551662835785,
                ],
                1,
            ),
            (
                [-0.2249194624633528, 0.951224853386959, 0.2111457167554078],
                [0.11958838571895775, -0.324101268633723, -0.9384332611705241],
                [-0.1090284626783286, 0.6491372011784375, -0.752817167957948],
                1,
            ),
            (
                [0.31021691829967163, 0.7312046389991742, 0.6075403192437042],
                [0.7924267635081037, 0.2764248495030395, -0.5437362660824584],
                [0.737523575962815, 0.673971579275134, 0.04267651846628642],
                -1,
            ),
            (
                [0.4372451057924607, -0.590734951645366, 0.6781216221040935],
                [0.1494088001562431, -0.4369402930794859, -0.8869950342135433],
                [
                    0.4882163371263874,
                    -0.8552365178983421,
                    -0.17382550622970291,
                ],
                1,
            ),
        ];
        for ([ax, ay, az], [bx, by, bz], [cx, cy, cz], expected) in cases {
            let (a, b, c) = (v(ax, ay, az), v(bx, by, bz), v(cx, cy, cz));
            assert_eq!(exact_orientation(a, b, c), expected, "{a:?} {b:?} {c:?}");
            assert_eq!(orientation(a, b, c), expected);
            assert_eq!(exact_orientation(b, a, c), -expected);
        }
    }

    #[test]
    fn exact_orientation_spans_the_exponent_range() {
        // Python: orientationExact(Vector3d(1, 1e-300, 0), Vector3d(0, 1, 1e-200),
        // Vector3d(1, 1e-300, 1e-250)) == 1. The terms are 2^-830 apart, and far below f64's
        // normal range.
        let a = v(1.0, 1e-300, 0.0);
        let b = v(0.0, 1.0, 1e-200);
        let c = v(1.0, 1e-300, 1e-250);
        assert_eq!(exact_orientation(a, b, c), 1);
        assert_eq!(exact_orientation(a, c, b), -1);
        // Subnormals and the largest finite values must not overflow the accumulators.
        let tiny = v(5e-324, 5e-324, 1.0);
        let huge = v(f64::MAX, -f64::MAX, 5e-324);
        assert_eq!(exact_orientation(tiny, huge, X), 1);
        assert_eq!(exact_orientation(huge, huge, tiny), 0);
    }

    fn polygon(hex_text: &str) -> ConvexPolygon {
        match Region::from_hex(hex_text) {
            Ok(Region::ConvexPolygon(p)) => p,
            other => panic!("test polygon does not decode: {other:?}"),
        }
    }

    const OCTANT_HEX: &str = "70000000000000f03f000000000000000000000000000000000000000000000000000000000000f03f000000000000000000000000000000000000000000000000000000000000f03f";

    #[test]
    fn octant_touches_every_root_but_its_antipode() -> Result<(), HtmError> {
        // Python: HtmPixelization(0).envelope(ConvexPolygon([X, Y, Z])).ranges() is
        // [(8, 10), (11, 16)]: the octant shares a vertex or an edge with every root trixel but
        // S2, the opposite octant; level 1 gives the ranges below.
        let octant = polygon(OCTANT_HEX);
        assert_eq!(
            HtmPixelization::new(0)?.envelope_ranges(&octant),
            vec![8..10, 11..16]
        );
        assert_eq!(
            HtmPixelization::new(1)?.envelope_ranges(&octant),
            vec![32..33, 34..37, 46..47, 48..50, 51..52, 53..54, 57..64]
        );
        Ok(())
    }

    #[test]
    fn visit_of_batch_a() -> Result<(), HtmError> {
        // The visit region of reference/messages/batch_a.jsonl; Python's
        // HtmPixelization(7).envelope(region).ranges().
        let visit = polygon(
            "70910c4d63e212e7bfc576a82e23d9dc3f9d1b1995bed6e0bfed778ff77008e8bfddf164052986d93f9d1b1995bed6e0bf42a1637e64e5e8bf674557f2d170da3f5033c792de4adebf4c50335804e7e7bfc23b84b65be2dd3f5033c792de4adebf",
        );
        let expected = vec![
            160016..160020,
            160024..160026,
            160027..160028,
            160029..160032,
            160224..160225,
            160226..160228,
            163360..163378,
            163379..163380,
            163382..163383,
            163390..163391,
            163536..163540,
            163542..163543,
            163549..163552,
        ];
        let htm7 = HtmPixelization::new(7)?;
        assert_eq!(htm7.envelope_ranges(&visit), expected);
        let pixels: Vec<u64> = expected.into_iter().flatten().collect();
        assert_eq!(htm7.envelope(&visit), pixels);
        Ok(())
    }
}
