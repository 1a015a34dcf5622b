//! LSSTCam's science focal plane on the sky: 189 detector regions and the visit region that
//! encloses them, as sphgeom convex polygons.
//!
//! The camera is 21 rafts on a 5 x 5 grid without its corners (the corner positions hold the
//! wavefront and guider sensors, which Prompt Processing does not process), each raft 3 x 3 CCDs of
//! about 0.22 degrees. Detector `id` is raft `id / 9` and sensor `S{row}{column}` of `id % 9`, the
//! numbering the registry's `detector` table uses (`R00_S00` .. `R20_S22`).
//!
//! Positions are laid out on the tangent plane at the pointing (x toward east, y toward north),
//! rotated by the sky angle, and taken to the sphere by the gnomonic projection. That projection
//! maps straight lines to great circles, so a CCD's four corners make an exact spherical
//! quadrilateral, and the planar convex hull of every corner makes a spherical convex polygon
//! that encloses every detector: the visit region, as obs_base builds it from the detectors.

use schema::{ConvexPolygon, UnitVector3d};

/// Science detectors of LSSTCam.
pub const DETECTORS: u32 = 189;
/// Side of one CCD's imaging area, in degrees.
pub const CCD_SIZE_DEG: f64 = 0.22;
/// Centre-to-centre distance of neighbouring CCDs in a raft, in degrees (the CCD and its gap).
pub const CCD_PITCH_DEG: f64 = 0.2267;
/// Centre-to-centre distance of neighbouring rafts, in degrees.
pub const RAFT_PITCH_DEG: f64 = 0.695;

/// Where the telescope points: the tangent point and the sky angle, all in degrees.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pointing {
    /// Right ascension of the boresight.
    pub ra: f64,
    /// Declination of the boresight.
    pub dec: f64,
    /// Rotation of the focal plane on the sky, counter-clockwise from north through east.
    pub sky_angle: f64,
}

/// The grid position (column, row) of raft `raft` (0..21): rows from the south, columns from the
/// west, row-major, skipping the four corners.
fn raft_position(raft: u32) -> (i32, i32) {
    let mut index = 0;
    for row in 0..5 {
        for column in 0..5 {
            let corner = (row == 0 || row == 4) && (column == 0 || column == 4);
            if corner {
                continue;
            }
            if index == raft {
                return (column, row);
            }
            index += 1;
        }
    }
    unreachable!("raft {raft} is not one of LSSTCam's 21 science rafts")
}

/// The `R{raft}_S{row}{column}` name of a detector, as the registry's `detector.full_name` has it.
pub fn detector_name(detector: u32) -> String {
    let sensor = detector % 9;
    format!("R{:02}_S{}{}", detector / 9, sensor / 3, sensor % 3)
}

/// The four corners of `detector` on the unrotated focal plane, counter-clockwise, in degrees.
fn detector_corners(detector: u32) -> [(f64, f64); 4] {
    assert!(
        detector < DETECTORS,
        "detector {detector} is not a science detector"
    );
    let (column, row) = raft_position(detector / 9);
    let sensor = detector % 9;
    let (sensor_row, sensor_column) = ((sensor / 3) as f64, (sensor % 3) as f64);
    let x = f64::from(column - 2) * RAFT_PITCH_DEG + (sensor_column - 1.0) * CCD_PITCH_DEG;
    let y = f64::from(row - 2) * RAFT_PITCH_DEG + (sensor_row - 1.0) * CCD_PITCH_DEG;
    let h = CCD_SIZE_DEG / 2.0;
    [
        (x - h, y - h),
        (x + h, y - h),
        (x + h, y + h),
        (x - h, y + h),
    ]
}

/// The projection of one pointing: tangent-plane degrees to unit vectors.
#[derive(Debug, Clone, Copy)]
struct Projection {
    centre: [f64; 3],
    east: [f64; 3],
    north: [f64; 3],
    cos: f64,
    sin: f64,
}

impl Projection {
    fn new(pointing: Pointing) -> Self {
        let (ra, dec) = (pointing.ra.to_radians(), pointing.dec.to_radians());
        let (sin_ra, cos_ra) = ra.sin_cos();
        let (sin_dec, cos_dec) = dec.sin_cos();
        let (sin, cos) = pointing.sky_angle.to_radians().sin_cos();
        Self {
            centre: [cos_dec * cos_ra, cos_dec * sin_ra, sin_dec],
            east: [-sin_ra, cos_ra, 0.0],
            north: [-sin_dec * cos_ra, -sin_dec * sin_ra, cos_dec],
            cos,
            sin,
        }
    }

    /// Rotates a focal-plane point by the sky angle onto the tangent plane.
    fn rotate(&self, (x, y): (f64, f64)) -> (f64, f64) {
        (x * self.cos - y * self.sin, x * self.sin + y * self.cos)
    }

    /// The unit vector of a tangent-plane point. Focal-plane positions are linear in the
    /// tangent plane (a plate scale, as a camera's are), so the plane's straight lines, and with
    /// them the hull's edges, stay great circles.
    fn project(&self, (xi, eta): (f64, f64)) -> UnitVector3d {
        let (xi, eta) = (xi.to_radians(), eta.to_radians());
        let v: [f64; 3] =
            std::array::from_fn(|i| self.centre[i] + xi * self.east[i] + eta * self.north[i]);
        UnitVector3d::normalized(v[0], v[1], v[2])
            .unwrap_or_else(|| unreachable!("a point of the tangent plane is never the origin"))
    }

    /// The spherical polygon of a counter-clockwise planar polygon. (east, north, centre) is a
    /// right-handed frame, so counter-clockwise on the plane is counter-clockwise seen from outside
    /// the sphere: sphgeom's vertex order.
    fn polygon(&self, corners: &[(f64, f64)]) -> ConvexPolygon {
        let vertices = corners.iter().map(|&c| self.project(c)).collect();
        ConvexPolygon::new(vertices).unwrap_or_else(|e| unreachable!("{e}"))
    }
}

/// The regions of one visit: every science detector's, and the visit's.
#[derive(Debug, Clone)]
pub struct VisitRegions {
    /// Detector `i`'s region at index `i`.
    pub detectors: Vec<ConvexPolygon>,
    /// The convex hull of every detector: the visit region.
    pub visit: ConvexPolygon,
}

/// The detector and visit regions of a pointing.
pub fn visit_regions(pointing: Pointing) -> VisitRegions {
    let projection = Projection::new(pointing);
    let mut all_corners = Vec::with_capacity(4 * DETECTORS as usize);
    let detectors = (0..DETECTORS)
        .map(|detector| {
            let corners = detector_corners(detector).map(|c| projection.rotate(c));
            all_corners.extend_from_slice(&corners);
            projection.polygon(&corners)
        })
        .collect();
    // Scaled out by a hair (under a milliarcsecond) so that corners the hull dropped as
    // collinear, which rounding may leave a trillionth of a radian outside, are inside.
    let hull: Vec<(f64, f64)> = convex_hull(all_corners)
        .into_iter()
        .map(|(x, y)| (x * (1.0 + 1e-7), y * (1.0 + 1e-7)))
        .collect();
    VisitRegions {
        detectors,
        visit: projection.polygon(&hull),
    }
}

/// The convex hull of planar points, counter-clockwise, without collinear points (Andrew's
/// monotone chain).
fn convex_hull(mut points: Vec<(f64, f64)>) -> Vec<(f64, f64)> {
    // Rotated corners that lie on one straight edge are collinear only to rounding: treat a
    // turn this small (square degrees) as straight, so the hull keeps only true corners.
    const COLLINEAR: f64 = 1e-9;
    points.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
    points.dedup();
    let cross = |o: (f64, f64), a: (f64, f64), b: (f64, f64)| {
        (a.0 - o.0) * (b.1 - o.1) - (a.1 - o.1) * (b.0 - o.0)
    };
    let mut hull: Vec<(f64, f64)> = Vec::with_capacity(points.len() + 1);
    for pass in 0..2 {
        let start = hull.len();
        let ordered: Box<dyn Iterator<Item = &(f64, f64)>> = if pass == 0 {
            Box::new(points.iter())
        } else {
            Box::new(points.iter().rev())
        };
        for &p in ordered {
            while hull.len() >= start + 2
                && cross(hull[hull.len() - 2], hull[hull.len() - 1], p) <= COLLINEAR
            {
                hull.pop();
            }
            hull.push(p);
        }
        hull.pop();
    }
    hull
}

#[cfg(test)]
mod tests {
    use super::*;
    use schema::{HtmPixelization, Region};

    fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
        a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
    }

    fn xyz(v: &UnitVector3d) -> [f64; 3] {
        v.components()
    }

    fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
        [
            a[1] * b[2] - a[2] * b[1],
            a[2] * b[0] - a[0] * b[2],
            a[0] * b[1] - a[1] * b[0],
        ]
    }

    /// True when `point` is inside or on `polygon` (left of every edge, seen from outside).
    fn contains(polygon: &ConvexPolygon, point: [f64; 3]) -> bool {
        let v: Vec<[f64; 3]> = polygon.vertices().iter().map(xyz).collect();
        (0..v.len()).all(|i| dot(cross(v[i], v[(i + 1) % v.len()]), point) >= -1e-12)
    }

    #[test]
    fn names_follow_the_registry() {
        assert_eq!(detector_name(0), "R00_S00");
        assert_eq!(detector_name(94), "R10_S11");
        assert_eq!(detector_name(188), "R20_S22");
    }

    #[test]
    fn rafts_fill_the_grid_without_corners() {
        let positions: std::collections::BTreeSet<_> = (0..21).map(raft_position).collect();
        assert_eq!(positions.len(), 21);
        for corner in [(0, 0), (4, 0), (0, 4), (4, 4)] {
            assert!(!positions.contains(&corner));
        }
        assert_eq!(raft_position(10), (2, 2), "raft 10 is the centre raft");
    }

    #[test]
    fn detectors_are_convex_counter_clockwise_and_inside_the_visit() {
        for pointing in [
            Pointing {
                ra: 150.0,
                dec: -30.0,
                sky_angle: 12.0,
            },
            Pointing {
                ra: 359.9,
                dec: -89.0,
                sky_angle: 271.0,
            },
            Pointing {
                ra: 0.1,
                dec: 10.0,
                sky_angle: 0.0,
            },
        ] {
            let regions = visit_regions(pointing);
            assert_eq!(regions.detectors.len(), 189);
            assert_eq!(
                regions.visit.vertices().len(),
                8,
                "the hull of a cross is an octagon"
            );
            for detector in &regions.detectors {
                let corners: Vec<[f64; 3]> = detector.vertices().iter().map(xyz).collect();
                let centre: [f64; 3] =
                    std::array::from_fn(|i| corners.iter().map(|c| c[i]).sum::<f64>());
                assert!(
                    contains(detector, centre),
                    "counter-clockwise: centre inside"
                );
                for corner in corners {
                    assert!(contains(&regions.visit, corner), "visit encloses detectors");
                }
            }
        }
    }

    #[test]
    fn a_detector_is_about_a_fifth_of_a_degree() {
        let regions = visit_regions(Pointing {
            ra: 40.0,
            dec: -20.0,
            sky_angle: 33.0,
        });
        let v: Vec<[f64; 3]> = regions.detectors[94].vertices().iter().map(xyz).collect();
        let side = dot(v[0], v[1]).clamp(-1.0, 1.0).acos().to_degrees();
        assert!((side - CCD_SIZE_DEG).abs() < 1e-3, "side {side}");
        let diagonal = dot(
            regions.visit.vertices().iter().map(xyz).next().expect("v"),
            xyz(&regions.visit.vertices()[4]),
        )
        .acos()
        .to_degrees();
        assert!(
            (3.5..4.5).contains(&diagonal),
            "corner to corner {diagonal}"
        );
    }

    #[test]
    fn regions_round_trip_and_have_htm_envelopes() {
        let regions = visit_regions(Pointing {
            ra: 150.0,
            dec: -30.0,
            sky_angle: 12.0,
        });
        let htm = HtmPixelization::new(7).expect("level 7");
        for polygon in regions.detectors.iter().chain([&regions.visit]) {
            let region = Region::from(polygon.clone());
            assert_eq!(Region::from_hex(&region.to_hex()).expect("decodes"), region);
            assert!(!htm.envelope(polygon).is_empty());
        }
        // A detector touches a handful of level-7 trixels (about 0.5 degrees each), a visit many.
        assert!(htm.envelope(&regions.detectors[0]).len() <= 8);
        assert!(htm.envelope(&regions.visit).len() > 30);
    }
}
