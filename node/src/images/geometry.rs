//! Where the pixels go: from the source's size (after EXIF orientation)
//! and a [`Spec`]'s box and fit to a [`Plan`] — which part of the source
//! is used, the size it is resized to, and the canvas it is put on. Pure.
//!
//! - `w` or `h` alone keeps the aspect ratio, whatever the fit.
//! - `max` fits inside the box and never enlarges.
//! - `pad` fits inside the box (enlarging if need be) and centres the
//!   image on a canvas of exactly the box.
//! - `crop` fills the box (enlarging if need be), cutting around the centre.
//! - `stretch` resizes to the box exactly.
//! - Neither `w` nor `h` (a format change): the source's size.
//!
//! Whatever the spec, the output fits in `max_output`×`max_output`: a size
//! derived from the source (an aspect ratio, a bare format change) is
//! shrunk to fit; a size asked for beyond it was refused when parsed.

use super::params::{Fit, Spec};

/// A width and a height in pixels, both at least 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size {
    pub w: u32,
    pub h: u32,
}

/// A part of the source, in source pixels (fractions allowed: the resizer
/// samples between pixels).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Region {
    pub x: f64,
    pub y: f64,
    pub w: f64,
    pub h: f64,
}

/// What to do with the pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Plan {
    /// The part of the (oriented) source used: all of it but for `crop`.
    pub region: Region,
    /// The size that part is resized to.
    pub resized: Size,
    /// The output's size: `resized`, or bigger for `pad`.
    pub canvas: Size,
    /// Where the resized image sits on the canvas (top-left corner).
    pub offset: (u32, u32),
}

impl Plan {
    /// By how much a decoder may shrink the source while decoding (1, 2,
    /// 4 or 8: JPEG's shrink-on-load) and still give the resizer at least
    /// as many pixels as it makes, in both directions.
    pub fn shrink_on_load(&self) -> u32 {
        let fx = self.region.w / f64::from(self.resized.w);
        let fy = self.region.h / f64::from(self.resized.h);
        let room = fx.min(fy);
        [8, 4, 2]
            .into_iter()
            .find(|k| f64::from(*k) <= room)
            .unwrap_or(1)
    }

    /// Whether the pixels go out as they came in (no resampling).
    pub fn is_identity(&self, source: Size) -> bool {
        self.resized == source && self.canvas == source && self.region == whole(source)
    }
}

fn whole(s: Size) -> Region {
    Region {
        x: 0.0,
        y: 0.0,
        w: f64::from(s.w),
        h: f64::from(s.h),
    }
}

/// `n × num / den`, rounded to the nearest pixel, at least 1.
fn scale(n: u32, num: u32, den: u32) -> u32 {
    let (n, num, den) = (u64::from(n), u64::from(num), u64::from(den.max(1)));
    u32::try_from(((n * num * 2 + den) / (2 * den)).max(1)).unwrap_or(u32::MAX)
}

/// `size` shrunk (never enlarged) to fit inside `bound`×`bound`.
fn within(size: Size, bound: u32) -> Size {
    if size.w <= bound && size.h <= bound {
        return size;
    }
    if size.w >= size.h {
        Size {
            w: bound,
            h: scale(size.h, bound, size.w),
        }
    } else {
        Size {
            w: scale(size.w, bound, size.h),
            h: bound,
        }
    }
}

/// The size of `source` with one side set and the aspect ratio kept.
fn keep_aspect(source: Size, w: Option<u32>, h: Option<u32>) -> Size {
    match (w, h) {
        (Some(w), _) => Size {
            w,
            h: scale(source.h, w, source.w),
        },
        (None, Some(h)) => Size {
            w: scale(source.w, h, source.h),
            h,
        },
        (None, None) => source,
    }
}

fn plain(source: Size, resized: Size) -> Plan {
    Plan {
        region: whole(source),
        resized,
        canvas: resized,
        offset: (0, 0),
    }
}

/// The plan for a source of this size (after orientation).
pub fn plan(source: Size, spec: &Spec, max_output: u32) -> Plan {
    let (w, h) = (spec.width, spec.height);
    let (Some(bw), Some(bh)) = (w, h) else {
        // One side or none: the aspect ratio is kept, whatever the fit.
        let resized = match spec.fit {
            Fit::Max => {
                let asked = keep_aspect(source, w, h);
                if asked.w >= source.w || asked.h >= source.h {
                    source
                } else {
                    asked
                }
            }
            Fit::Pad | Fit::Crop | Fit::Stretch => keep_aspect(source, w, h),
        };
        return plain(source, within(resized, max_output));
    };
    // Does the source's aspect ratio run wider than the box's?
    let wider = u64::from(source.w) * u64::from(bh) >= u64::from(bw) * u64::from(source.h);
    let fitted = if wider {
        Size {
            w: bw,
            h: scale(source.h, bw, source.w).min(bh),
        }
    } else {
        Size {
            w: scale(source.w, bh, source.h).min(bw),
            h: bh,
        }
    };
    match spec.fit {
        Fit::Max => {
            if fitted.w >= source.w || fitted.h >= source.h {
                plain(source, source)
            } else {
                plain(source, fitted)
            }
        }
        Fit::Stretch => plain(source, Size { w: bw, h: bh }),
        Fit::Pad => Plan {
            region: whole(source),
            resized: fitted,
            canvas: Size { w: bw, h: bh },
            offset: ((bw - fitted.w) / 2, (bh - fitted.h) / 2),
        },
        Fit::Crop => {
            let (sw, sh) = (f64::from(source.w), f64::from(source.h));
            let aspect = f64::from(bw) / f64::from(bh);
            let region = if wider {
                let cw = sh * aspect;
                Region {
                    x: (sw - cw) / 2.0,
                    y: 0.0,
                    w: cw,
                    h: sh,
                }
            } else {
                let ch = sw / aspect;
                Region {
                    x: 0.0,
                    y: (sh - ch) / 2.0,
                    w: sw,
                    h: ch,
                }
            };
            let box_ = Size { w: bw, h: bh };
            Plan {
                region,
                resized: box_,
                canvas: box_,
                offset: (0, 0),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::params::Format;
    use super::*;

    fn spec(w: Option<u32>, h: Option<u32>, fit: Fit) -> Spec {
        Spec {
            width: w,
            height: h,
            fit,
            format: Format::Png,
            quality: 0,
        }
    }

    const LANDSCAPE: Size = Size { w: 4000, h: 3000 };
    const PORTRAIT: Size = Size { w: 3000, h: 4000 };

    fn sizes(p: &Plan) -> ((u32, u32), (u32, u32), (u32, u32)) {
        (
            (p.resized.w, p.resized.h),
            (p.canvas.w, p.canvas.h),
            p.offset,
        )
    }

    #[test]
    fn one_side_keeps_the_aspect_ratio_for_every_fit() {
        for fit in [Fit::Max, Fit::Pad, Fit::Crop, Fit::Stretch] {
            let p = plan(LANDSCAPE, &spec(Some(800), None, fit), 4096);
            assert_eq!(sizes(&p), ((800, 600), (800, 600), (0, 0)), "{fit:?}");
            let p = plan(PORTRAIT, &spec(None, Some(800), fit), 4096);
            assert_eq!(sizes(&p), ((600, 800), (600, 800), (0, 0)), "{fit:?}");
            assert_eq!(p.region, whole(PORTRAIT));
        }
    }

    #[test]
    fn max_fits_inside_and_never_enlarges() {
        let p = plan(LANDSCAPE, &spec(Some(800), Some(800), Fit::Max), 4096);
        assert_eq!(sizes(&p), ((800, 600), (800, 600), (0, 0)));
        let p = plan(PORTRAIT, &spec(Some(800), Some(800), Fit::Max), 4096);
        assert_eq!(sizes(&p), ((600, 800), (600, 800), (0, 0)));
        let small = Size { w: 300, h: 200 };
        for s in [
            spec(Some(800), None, Fit::Max),
            spec(Some(800), Some(800), Fit::Max),
            spec(None, Some(201), Fit::Max),
        ] {
            assert!(plan(small, &s, 4096).is_identity(small), "{s:?}");
        }
    }

    #[test]
    fn pad_letterboxes_on_exactly_the_box() {
        let p = plan(LANDSCAPE, &spec(Some(400), Some(400), Fit::Pad), 4096);
        assert_eq!(sizes(&p), ((400, 300), (400, 400), (0, 50)));
        let p = plan(PORTRAIT, &spec(Some(400), Some(400), Fit::Pad), 4096);
        assert_eq!(sizes(&p), ((300, 400), (400, 400), (50, 0)));
        // An odd gap: the extra pixel goes after the image.
        let p = plan(LANDSCAPE, &spec(Some(400), Some(301), Fit::Pad), 4096);
        assert_eq!(sizes(&p), ((400, 300), (400, 301), (0, 0)));
        // Enlarges to the box.
        let p = plan(
            Size { w: 40, h: 30 },
            &spec(Some(400), Some(400), Fit::Pad),
            4096,
        );
        assert_eq!(sizes(&p), ((400, 300), (400, 400), (0, 50)));
    }

    #[test]
    fn crop_fills_the_box_from_the_centre() {
        let p = plan(LANDSCAPE, &spec(Some(300), Some(300), Fit::Crop), 4096);
        assert_eq!(sizes(&p), ((300, 300), (300, 300), (0, 0)));
        assert_eq!(
            p.region,
            Region {
                x: 500.0,
                y: 0.0,
                w: 3000.0,
                h: 3000.0
            }
        );
        let p = plan(PORTRAIT, &spec(Some(400), Some(100), Fit::Crop), 4096);
        assert_eq!(
            p.region,
            Region {
                x: 0.0,
                y: 1625.0,
                w: 3000.0,
                h: 750.0
            }
        );
        assert_eq!(sizes(&p), ((400, 100), (400, 100), (0, 0)));
    }

    #[test]
    fn stretch_takes_the_box_exactly() {
        let p = plan(LANDSCAPE, &spec(Some(100), Some(500), Fit::Stretch), 4096);
        assert_eq!(sizes(&p), ((100, 500), (100, 500), (0, 0)));
    }

    #[test]
    fn a_size_derived_from_the_source_fits_the_output_limit() {
        let tall = Size { w: 100, h: 10_000 };
        let p = plan(tall, &spec(None, None, Fit::Max), 4096);
        assert_eq!(sizes(&p), ((41, 4096), (41, 4096), (0, 0)));
        let p = plan(tall, &spec(Some(200), None, Fit::Stretch), 4096);
        assert_eq!((p.canvas.w, p.canvas.h), (41, 4096));
        let p = plan(Size { w: 1, h: 5000 }, &spec(None, None, Fit::Max), 4096);
        assert_eq!((p.canvas.w, p.canvas.h), (1, 4096));
    }

    #[test]
    fn shrink_on_load_leaves_at_least_the_pixels_made() {
        let p = plan(LANDSCAPE, &spec(Some(800), None, Fit::Max), 4096);
        assert_eq!(p.shrink_on_load(), 4);
        let p = plan(LANDSCAPE, &spec(Some(400), None, Fit::Max), 4096);
        assert_eq!(p.shrink_on_load(), 8);
        let p = plan(LANDSCAPE, &spec(Some(2500), None, Fit::Max), 4096);
        assert_eq!(p.shrink_on_load(), 1);
        // Crop: the region's shrink, not the whole image's.
        let p = plan(LANDSCAPE, &spec(Some(1000), Some(100), Fit::Crop), 4096);
        assert_eq!(p.shrink_on_load(), 4);
        // Stretch: the direction shrunk least decides.
        let p = plan(LANDSCAPE, &spec(Some(100), Some(1500), Fit::Stretch), 4096);
        assert_eq!(p.shrink_on_load(), 2);
    }
}
