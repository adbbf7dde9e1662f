//! Rotated rectangles: the smallest one around a set of points (what a text
//! detector's region becomes), grown by a margin, and the picture inside one
//! cut out upright (what a text recognizer reads).

use image::{Rgb, RgbImage};

/// A rectangle at any angle, in pixel coordinates (y down). Its `axis` is
/// the direction of its width, kept within 45 degrees of the x axis and
/// pointing right, so text inside it reads from the first corner on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RotatedRect {
    pub centre: [f64; 2],
    /// Unit vector along the width.
    pub axis: [f64; 2],
    pub width: f64,
    pub height: f64,
}

impl RotatedRect {
    /// Top left, top right, bottom right, bottom left (as read).
    pub fn corners(&self) -> [[f64; 2]; 4] {
        let [ux, uy] = self.axis;
        let [vx, vy] = [-uy, ux];
        let (hw, hh) = (self.width / 2.0, self.height / 2.0);
        let at = |a: f64, b: f64| {
            [
                self.centre[0] + a * ux + b * vx,
                self.centre[1] + a * uy + b * vy,
            ]
        };
        [at(-hw, -hh), at(hw, -hh), at(hw, hh), at(-hw, hh)]
    }

    pub fn area(&self) -> f64 {
        self.width * self.height
    }

    pub fn shorter_side(&self) -> f64 {
        self.width.min(self.height)
    }

    /// Grown by `margin` on every side.
    pub fn grown(&self, margin: f64) -> Self {
        Self {
            width: self.width + 2.0 * margin,
            height: self.height + 2.0 * margin,
            ..*self
        }
    }

    /// Scaled by `sx` along x and `sy` along y (from one image's pixels to
    /// another's of a different size), still a rectangle when `sx == sy` and
    /// near enough one for the small differences of rounding sizes.
    pub fn scaled(&self, sx: f64, sy: f64) -> Self {
        let [ux, uy] = self.axis;
        let along = ((ux * sx).powi(2) + (uy * sy).powi(2)).sqrt();
        let across = ((uy * sx).powi(2) + (ux * sy).powi(2)).sqrt();
        let axis = [ux * sx / along, uy * sy / along];
        Self {
            centre: [self.centre[0] * sx, self.centre[1] * sy],
            axis,
            width: self.width * along,
            height: self.height * across,
        }
    }

    /// Axis-aligned bounds: left, top, right, bottom.
    pub fn bounds(&self) -> [f64; 4] {
        let corners = self.corners();
        let xs = corners.map(|c| c[0]);
        let ys = corners.map(|c| c[1]);
        [
            xs.iter().copied().fold(f64::INFINITY, f64::min),
            ys.iter().copied().fold(f64::INFINITY, f64::min),
            xs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            ys.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        ]
    }

    /// Turned so its width runs along whichever of its sides is nearer the
    /// x axis, pointing right.
    fn upright(self) -> Self {
        let [ux, uy] = self.axis;
        let (axis, width, height) = match ux.abs() >= uy.abs() {
            true => ([ux, uy], self.width, self.height),
            // The height's direction, (-uy, ux), is the nearer one.
            false => ([-uy, ux], self.height, self.width),
        };
        let axis = if axis[0] < 0.0 {
            [-axis[0], -axis[1]]
        } else {
            axis
        };
        Self {
            axis,
            width,
            height,
            ..self
        }
    }
}

/// The smallest-area rectangle around `points` (rotating calipers over their
/// convex hull); `None` for fewer than one point. Lines and single points
/// give rectangles of zero height or width.
pub fn min_area_rect(points: &[[f64; 2]]) -> Option<RotatedRect> {
    let hull = convex_hull(points);
    let first = *hull.first()?;
    if hull.len() == 1 {
        return Some(RotatedRect {
            centre: first,
            axis: [1.0, 0.0],
            width: 0.0,
            height: 0.0,
        });
    }
    let mut best: Option<RotatedRect> = None;
    for (i, a) in hull.iter().enumerate() {
        let b = hull[(i + 1) % hull.len()];
        let (dx, dy) = (b[0] - a[0], b[1] - a[1]);
        let length = dx.hypot(dy);
        if length == 0.0 {
            continue;
        }
        let rect = aligned_rect(&hull, [dx / length, dy / length]);
        if best.is_none_or(|b| rect.area() < b.area()) {
            best = Some(rect);
        }
    }
    best.map(RotatedRect::upright)
}

/// The rectangle around `points` with its width along `axis`.
fn aligned_rect(points: &[[f64; 2]], axis: [f64; 2]) -> RotatedRect {
    let [ux, uy] = axis;
    let (mut min_u, mut max_u) = (f64::INFINITY, f64::NEG_INFINITY);
    let (mut min_v, mut max_v) = (f64::INFINITY, f64::NEG_INFINITY);
    for [x, y] in points {
        let u = x * ux + y * uy;
        let v = -x * uy + y * ux;
        (min_u, max_u) = (min_u.min(u), max_u.max(u));
        (min_v, max_v) = (min_v.min(v), max_v.max(v));
    }
    let (cu, cv) = ((min_u + max_u) / 2.0, (min_v + max_v) / 2.0);
    RotatedRect {
        centre: [cu * ux - cv * uy, cu * uy + cv * ux],
        axis,
        width: max_u - min_u,
        height: max_v - min_v,
    }
}

/// The convex hull, counter-clockwise in y-down pixels (Andrew's monotone
/// chain), without repeated or collinear points.
pub fn convex_hull(points: &[[f64; 2]]) -> Vec<[f64; 2]> {
    let mut sorted = points.to_vec();
    sorted.sort_by(|a, b| a[0].total_cmp(&b[0]).then(a[1].total_cmp(&b[1])));
    sorted.dedup();
    if sorted.len() < 3 {
        return sorted;
    }
    let cross = |o: [f64; 2], a: [f64; 2], b: [f64; 2]| {
        (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])
    };
    let mut hull: Vec<[f64; 2]> = Vec::with_capacity(sorted.len() * 2);
    for pass in [
        &sorted[..],
        &sorted.iter().rev().copied().collect::<Vec<_>>()[..],
    ] {
        let start = hull.len();
        for &p in pass {
            while hull.len() >= start + 2
                && cross(hull[hull.len() - 2], hull[hull.len() - 1], p) <= 0.0
            {
                hull.pop();
            }
            hull.push(p);
        }
        hull.pop();
    }
    hull
}

/// The picture inside `rect`, cut out upright at `width` x `height` pixels
/// (bilinear; outside the picture, its nearest edge pixel).
pub fn cut_out(rgb: &RgbImage, rect: &RotatedRect, width: u32, height: u32) -> RgbImage {
    let [top_left, top_right, _, bottom_left] = rect.corners();
    let step_x = [
        (top_right[0] - top_left[0]) / f64::from(width.max(1)),
        (top_right[1] - top_left[1]) / f64::from(width.max(1)),
    ];
    let step_y = [
        (bottom_left[0] - top_left[0]) / f64::from(height.max(1)),
        (bottom_left[1] - top_left[1]) / f64::from(height.max(1)),
    ];
    RgbImage::from_fn(width.max(1), height.max(1), |u, v| {
        let (u, v) = (f64::from(u) + 0.5, f64::from(v) + 0.5);
        let x = top_left[0] + u * step_x[0] + v * step_y[0] - 0.5;
        let y = top_left[1] + u * step_x[1] + v * step_y[1] - 0.5;
        bilinear(rgb, x, y)
    })
}

fn bilinear(rgb: &RgbImage, x: f64, y: f64) -> Rgb<u8> {
    let (w, h) = (rgb.width() as i64, rgb.height() as i64);
    let (x0, y0) = (x.floor(), y.floor());
    let (fx, fy) = (x - x0, y - y0);
    let at = |dx: i64, dy: i64| {
        let px = (x0 as i64 + dx).clamp(0, w - 1) as u32;
        let py = (y0 as i64 + dy).clamp(0, h - 1) as u32;
        rgb.get_pixel(px, py).0
    };
    let (a, b, c, d) = (at(0, 0), at(1, 0), at(0, 1), at(1, 1));
    Rgb(std::array::from_fn(|i| {
        let top = f64::from(a[i]) * (1.0 - fx) + f64::from(b[i]) * fx;
        let bottom = f64::from(c[i]) * (1.0 - fx) + f64::from(d[i]) * fx;
        (top * (1.0 - fy) + bottom * fy).round().clamp(0.0, 255.0) as u8
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn hull_drops_inner_and_collinear_points() {
        let hull = convex_hull(&[
            [0.0, 0.0],
            [2.0, 0.0],
            [1.0, 0.0],
            [2.0, 2.0],
            [0.0, 2.0],
            [1.0, 1.0],
            [0.0, 0.0],
        ]);
        assert_eq!(hull.len(), 4);
        assert!(!hull.contains(&[1.0, 1.0]) && !hull.contains(&[1.0, 0.0]));
    }

    #[test]
    fn min_rect_of_an_axis_aligned_block() {
        let points: Vec<[f64; 2]> = (0..10)
            .flat_map(|x| (0..4).map(move |y| [f64::from(x), f64::from(y)]))
            .collect();
        let rect = min_area_rect(&points).unwrap();
        assert!(
            close(rect.width, 9.0) && close(rect.height, 3.0),
            "{rect:?}"
        );
        assert!(close(rect.centre[0], 4.5) && close(rect.centre[1], 1.5));
        assert!(close(rect.axis[0], 1.0) && close(rect.axis[1], 0.0));
        let [tl, tr, br, bl] = rect.corners();
        assert_eq!(
            (tl, tr, br, bl),
            ([0.0, 0.0], [9.0, 0.0], [9.0, 3.0], [0.0, 3.0])
        );
    }

    #[test]
    fn min_rect_of_a_tilted_line_of_text_reads_left_to_right() {
        // A 20 x 4 block turned by 30 degrees (y down: its right end higher).
        let (c, s) = (30f64.to_radians().cos(), 30f64.to_radians().sin());
        let points: Vec<[f64; 2]> = [[0.0, 0.0], [20.0, 0.0], [20.0, 4.0], [0.0, 4.0]]
            .iter()
            .map(|[x, y]| [x * c + y * s + 50.0, -x * s + y * c + 50.0])
            .collect();
        let rect = min_area_rect(&points).unwrap();
        assert!(
            close(rect.width, 20.0) && close(rect.height, 4.0),
            "{rect:?}"
        );
        assert!(rect.axis[0] > 0.0 && close(rect.axis[1], -s));
        let [tl, ..] = rect.corners();
        assert!(close(tl[0], 50.0) && close(tl[1], 50.0), "{tl:?}");
    }

    #[test]
    fn a_tall_rectangle_keeps_its_width_along_the_nearer_axis() {
        let rect = min_area_rect(&[[0.0, 0.0], [2.0, 0.0], [2.0, 10.0], [0.0, 10.0]]).unwrap();
        assert!(
            close(rect.width, 2.0) && close(rect.height, 10.0),
            "{rect:?}"
        );
        assert!(close(rect.axis[0], 1.0));
    }

    #[test]
    fn growing_and_scaling() {
        let rect = RotatedRect {
            centre: [10.0, 5.0],
            axis: [1.0, 0.0],
            width: 8.0,
            height: 2.0,
        };
        let grown = rect.grown(1.0);
        assert_eq!((grown.width, grown.height), (10.0, 4.0));
        let scaled = rect.scaled(2.0, 3.0);
        assert_eq!(scaled.centre, [20.0, 15.0]);
        assert_eq!((scaled.width, scaled.height), (16.0, 6.0));
        assert_eq!(rect.bounds(), [6.0, 4.0, 14.0, 6.0]);
    }

    #[test]
    fn cut_out_copies_an_upright_region_pixel_for_pixel() {
        let rgb = RgbImage::from_fn(20, 10, |x, y| Rgb([x as u8, y as u8, 7]));
        let rect = RotatedRect {
            centre: [7.0, 4.0],
            axis: [1.0, 0.0],
            width: 6.0,
            height: 4.0,
        };
        let cut = cut_out(&rgb, &rect, 6, 4);
        assert_eq!(cut.dimensions(), (6, 4));
        assert_eq!(cut.get_pixel(0, 0).0, [4, 2, 7]);
        assert_eq!(cut.get_pixel(5, 3).0, [9, 5, 7]);
    }
}
