//! One rendition made from a source's bytes, in this order (transforms
//! that come later slot in between, so the order is part of the
//! contract):
//!
//! 1. **probe** the header: format by magic bytes, size, animation
//!    (`probe.rs`) — not a still raster image: served unchanged;
//! 2. **limits** from the header, before any pixel: `images.max_megapixels`
//!    (422 over it);
//! 3. **plan** the geometry on the upright size (`geometry.rs`);
//! 4. **decode**, shrunk on load where the format allows, within
//!    `images.max_decode_mb`, with EXIF orientation applied (`decode.rs`);
//! 5. **resize** (and crop) with a Lanczos-3 filter, alpha premultiplied
//!    (`fast_image_resize`, SIMD);
//! 6. **colour**: an embedded ICC profile converted to sRGB (`lcms2`);
//! 7. **compose**: `pad`'s canvas, transparent (PNG, WebP, AVIF) or white
//!    (JPEG); transparency put on white for JPEG;
//! 8. **encode** with no metadata (`encode.rs`).
//!
//! Between steps the deadline (`images.timeout_ms`) is checked. Changing
//! what any step outputs (a new filter, encoder setting or library version)
//! means a new [`PIPELINE_VERSION`]: it is part of every ETag, so two
//! builds that encode differently never share a strong ETag.

use std::time::Instant;

use fast_image_resize as fr;

use super::decode::{self, Pixels};
use super::encode;
use super::geometry::{self, Size};
use super::params::{Format, Spec};
use super::probe;

/// The version of what this pipeline makes of a source and a spec. A
/// test (`the_pipeline_version_changes_with_its_output`) pins the bytes
/// it makes of a test image, so a change of output fails it until this
/// is raised.
pub const PIPELINE_VERSION: u32 = 1;

/// The limits of one node, from the cluster's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Source pixels (width × height from the header).
    pub max_pixels: u64,
    /// Width and height of the output.
    pub max_output: u32,
    /// Bytes of decoded pixels.
    pub max_decode_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_pixels: 50_000_000,
            max_output: 4096,
            max_decode_bytes: 256 << 20,
        }
    }
}

/// Why no rendition was made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Not a still raster image we decode (or cut short, or corrupt):
    /// the file is served unchanged.
    #[error("not processed: {0}")]
    NotRaster(String),
    /// Over a limit of the source's: 422.
    #[error("{0}")]
    TooLarge(String),
    /// The deadline passed: 503.
    #[error("processing took longer than this cluster's limit (images.timeout_ms)")]
    TimedOut,
    /// An encoder failed on pixels we made: a bug, logged; the file is
    /// served unchanged.
    #[error("{0}")]
    Failed(String),
}

/// Makes the rendition `spec` of the source `bytes`.
pub fn render(
    bytes: &[u8],
    spec: &Spec,
    limits: &Limits,
    deadline: Instant,
) -> Result<Vec<u8>, Refused> {
    let check = || {
        if Instant::now() > deadline {
            Err(Refused::TimedOut)
        } else {
            Ok(())
        }
    };
    // 1–2: the header and the limits on it.
    let probe = probe::probe(bytes).map_err(|e| Refused::NotRaster(e.to_string()))?;
    let pixels = u64::from(probe.size.w) * u64::from(probe.size.h);
    if pixels > limits.max_pixels {
        return Err(Refused::TooLarge(format!(
            "the source is {}×{} ({} megapixels), over this cluster's limit of {} (images.max_megapixels)",
            probe.size.w,
            probe.size.h,
            pixels.div_ceil(1_000_000),
            limits.max_pixels / 1_000_000
        )));
    }
    // 3–4: the plan on the upright size, and the pixels.
    let decoded = decode::decode(
        bytes,
        &probe,
        |upright| geometry::plan(upright, spec, limits.max_output).shrink_on_load(),
        limits.max_decode_bytes,
    )?;
    check()?;
    let plan = geometry::plan(decoded.source, spec, limits.max_output);
    // 5: resize the planned region, found in the pixels as decoded.
    let mut pixels = resize(decoded.pixels, decoded.source, &plan)?;
    check()?;
    // 6: sRGB.
    if let Some(icc) = &decoded.icc {
        to_srgb(&mut pixels, icc);
    }
    // 7: the canvas, and no alpha for JPEG.
    let pixels = compose(pixels, &plan, spec.format);
    check()?;
    // 8.
    encode::encode(&pixels, spec.format, spec.quality)
}

fn resize(src: Pixels, source: Size, plan: &geometry::Plan) -> Result<Pixels, Refused> {
    if plan.is_identity(source) && src.size == source {
        return Ok(src);
    }
    let failed = |e: &dyn std::fmt::Display| Refused::Failed(format!("resizing failed: {e}"));
    // The region in the decoded pixels (smaller when shrunk on load).
    let sx = f64::from(src.size.w) / f64::from(source.w);
    let sy = f64::from(src.size.h) / f64::from(source.h);
    let r = plan.region;
    let alpha = src.alpha;
    let kind = if alpha {
        fr::PixelType::U8x4
    } else {
        fr::PixelType::U8x3
    };
    let from = fr::images::Image::from_vec_u8(src.size.w, src.size.h, src.data, kind)
        .map_err(|e| failed(&e))?;
    let mut to = fr::images::Image::new(plan.resized.w, plan.resized.h, kind);
    let options = fr::ResizeOptions::new()
        .resize_alg(fr::ResizeAlg::Convolution(fr::FilterType::Lanczos3))
        .crop(r.x * sx, r.y * sy, r.w * sx, r.h * sy)
        .use_alpha(alpha);
    fr::Resizer::new()
        .resize(&from, &mut to, &options)
        .map_err(|e| failed(&e))?;
    Ok(Pixels {
        size: plan.resized,
        alpha,
        data: to.into_vec(),
    })
}

/// Converts pixels in the colour space of `icc` to sRGB. A profile that
/// does not parse, is not RGB, or is sRGB already leaves them as they are.
fn to_srgb(pixels: &mut Pixels, icc: &[u8]) {
    let Ok(profile) = lcms2::Profile::new_icc(icc) else {
        tracing::debug!("an embedded ICC profile does not parse; its pixels are taken as sRGB");
        return;
    };
    if profile.color_space() != lcms2::ColorSpaceSignature::RgbData {
        return;
    }
    let is_srgb = profile
        .info(lcms2::InfoType::Description, lcms2::Locale::none())
        .is_some_and(|d| d.contains("sRGB"));
    if is_srgb {
        return;
    }
    let srgb = lcms2::Profile::new_srgb();
    let intent = lcms2::Intent::Perceptual;
    if pixels.alpha {
        let (chunks, _) = pixels.data.as_chunks_mut::<4>();
        if let Ok(t) = lcms2::Transform::<[u8; 4], [u8; 4]>::new(
            &profile,
            lcms2::PixelFormat::RGBA_8,
            &srgb,
            lcms2::PixelFormat::RGBA_8,
            intent,
        ) {
            t.transform_in_place(chunks);
        }
    } else {
        let (chunks, _) = pixels.data.as_chunks_mut::<3>();
        if let Ok(t) = lcms2::Transform::<[u8; 3], [u8; 3]>::new(
            &profile,
            lcms2::PixelFormat::RGB_8,
            &srgb,
            lcms2::PixelFormat::RGB_8,
            intent,
        ) {
            t.transform_in_place(chunks);
        }
    }
}

/// Puts the resized image on its canvas (`pad`), and transparency on
/// white when the format has none.
fn compose(pixels: Pixels, plan: &geometry::Plan, format: Format) -> Pixels {
    let padded = plan.canvas != plan.resized;
    let alpha = format.has_alpha() && (pixels.alpha || padded);
    if !padded && alpha == pixels.alpha {
        return pixels;
    }
    let out_ch = if alpha { 4 } else { 3 };
    let background: &[u8] = if alpha {
        &[0, 0, 0, 0]
    } else {
        &[255, 255, 255]
    };
    let (cw, ch) = (plan.canvas.w as usize, plan.canvas.h as usize);
    let mut data = background.repeat(cw * ch);
    let (ox, oy) = (plan.offset.0 as usize, plan.offset.1 as usize);
    let in_ch = pixels.channels();
    let rw = pixels.size.w as usize;
    for (y, row) in pixels.data.chunks_exact(rw * in_ch).enumerate() {
        let start = ((oy + y) * cw + ox) * out_ch;
        let dst = &mut data[start..start + rw * out_ch];
        for (d, s) in dst.chunks_exact_mut(out_ch).zip(row.chunks_exact(in_ch)) {
            match (in_ch, out_ch) {
                (4, 3) => {
                    // Over white: c·a + 255·(1 − a).
                    let a = u32::from(s[3]);
                    for i in 0..3 {
                        d[i] = ((u32::from(s[i]) * a + 255 * (255 - a) + 127) / 255) as u8;
                    }
                }
                (3, 4) => {
                    d[..3].copy_from_slice(s);
                    d[3] = 255;
                }
                _ => d.copy_from_slice(s),
            }
        }
    }
    Pixels {
        size: plan.canvas,
        alpha,
        data,
    }
}

#[cfg(test)]
mod tests {
    use super::super::params::Fit;
    use super::*;

    const FITS: [Fit; 4] = [Fit::Max, Fit::Pad, Fit::Crop, Fit::Stretch];

    fn spec(w: Option<u32>, h: Option<u32>, fit: Fit, format: Format) -> Spec {
        Spec {
            width: w,
            height: h,
            fit,
            format,
            quality: if format == Format::Png { 0 } else { 80 },
        }
    }

    /// A gradient photo-like test image, as a PNG (opaque) or JPEG.
    fn gradient(w: u32, h: u32) -> image::RgbImage {
        image::RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([
                (x * 255 / w) as u8,
                (y * 255 / h) as u8,
                ((x + y) % 256) as u8,
            ])
        })
    }

    fn png_of(img: &image::RgbImage) -> Vec<u8> {
        let mut out = Vec::new();
        img.write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png)
            .unwrap();
        out
    }

    fn jpeg_of(img: &image::RgbImage) -> Vec<u8> {
        let mut c = turbojpeg::Compressor::new().unwrap();
        c.set_quality(90).unwrap();
        c.compress_to_vec(turbojpeg::Image {
            pixels: &img.as_raw()[..],
            width: img.width() as usize,
            pitch: img.width() as usize * 3,
            height: img.height() as usize,
            format: turbojpeg::PixelFormat::RGB,
        })
        .unwrap()
    }

    use std::io::Cursor;

    fn later() -> Instant {
        Instant::now() + std::time::Duration::from_secs(60)
    }

    fn dims(bytes: &[u8]) -> (u32, u32, image::ColorType) {
        let img = image::load_from_memory(bytes).unwrap();
        (img.width(), img.height(), img.color())
    }

    #[test]
    fn every_format_comes_out_at_the_planned_size() {
        let jpeg = jpeg_of(&gradient(400, 300));
        for format in [Format::Jpeg, Format::Png, Format::Webp] {
            for fit in FITS {
                let s = spec(Some(100), Some(100), fit, format);
                let out = render(&jpeg, &s, &Limits::default(), later()).unwrap();
                let (w, h, _) = dims(&out);
                let want = match fit {
                    Fit::Max => (100, 75),
                    _ => (100, 100),
                };
                assert_eq!((w, h), want, "{fit:?} {format:?}");
            }
        }
        let avif = render(
            &jpeg,
            &spec(Some(64), None, Fit::Max, Format::Avif),
            &Limits::default(),
            later(),
        )
        .unwrap();
        assert_eq!(&avif[4..12], b"ftypavif");
    }

    #[test]
    fn pad_is_transparent_in_png_and_white_in_jpeg() {
        let png = png_of(&gradient(200, 100));
        let s = spec(Some(100), Some(100), Fit::Pad, Format::Png);
        let out = render(&png, &s, &Limits::default(), later()).unwrap();
        let img = image::load_from_memory(&out).unwrap().into_rgba8();
        assert_eq!(img.dimensions(), (100, 100));
        assert_eq!(
            img.get_pixel(50, 5).0[3],
            0,
            "the band above is transparent"
        );
        assert_eq!(img.get_pixel(50, 50).0[3], 255);
        let s = spec(Some(100), Some(100), Fit::Pad, Format::Jpeg);
        let out = render(&png, &s, &Limits::default(), later()).unwrap();
        let img = image::load_from_memory(&out).unwrap().into_rgb8();
        let p = img.get_pixel(50, 5).0;
        assert!(p.iter().all(|c| *c > 245), "the band above is white: {p:?}");
    }

    /// A profile with sRGB's primaries and white but a linear tone curve:
    /// linear 128 is sRGB 188.
    fn linear_rgb_profile() -> Vec<u8> {
        let xy = |x, y| lcms2::CIExyY { x, y, Y: 1.0 };
        let primaries = lcms2::CIExyYTRIPLE {
            Red: xy(0.64, 0.33),
            Green: xy(0.30, 0.60),
            Blue: xy(0.15, 0.06),
        };
        let linear = lcms2::ToneCurve::new(1.0);
        lcms2::Profile::new_rgb(
            &xy(0.3127, 0.3290),
            &primaries,
            &[&linear, &linear, &linear],
        )
        .unwrap()
        .icc()
        .unwrap()
    }

    #[test]
    fn an_icc_profile_is_converted_to_srgb_and_not_sent() {
        let img = image::RgbImage::from_pixel(64, 64, image::Rgb([128, 128, 128]));
        let mut png = Vec::new();
        let mut encoder = image::codecs::png::PngEncoder::new(&mut png);
        image::ImageEncoder::set_icc_profile(&mut encoder, linear_rgb_profile()).unwrap();
        image::ImageEncoder::write_image(
            encoder,
            img.as_raw(),
            64,
            64,
            image::ExtendedColorType::Rgb8,
        )
        .unwrap();
        assert!(png.windows(4).any(|w| w == b"iCCP"));
        let s = spec(Some(32), None, Fit::Max, Format::Png);
        let out = render(&png, &s, &Limits::default(), later()).unwrap();
        assert!(!out.windows(4).any(|w| w == b"iCCP"), "no profile goes out");
        let px = image::load_from_memory(&out).unwrap().into_rgb8();
        let p = px.get_pixel(16, 16).0;
        assert!(p.iter().all(|c| (186..=190).contains(c)), "{p:?}");
    }

    #[test]
    fn a_source_over_the_pixel_limit_is_refused_from_its_header() {
        // A PNG header declaring 100,000 × 100,000 and no data at all.
        let mut b = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
        b.extend_from_slice(&100_000u32.to_be_bytes());
        b.extend_from_slice(&100_000u32.to_be_bytes());
        b.extend_from_slice(&[8, 6, 0, 0, 0, 0, 0, 0, 0]);
        let s = spec(Some(100), None, Fit::Max, Format::Png);
        let e = render(&b, &s, &Limits::default(), later()).unwrap_err();
        assert!(
            matches!(&e, Refused::TooLarge(m) if m.contains("100000×100000")),
            "{e}"
        );
    }

    #[test]
    fn cut_sources_are_not_processed() {
        let s = spec(Some(50), None, Fit::Max, Format::Png);
        for full in [jpeg_of(&gradient(300, 200)), png_of(&gradient(300, 200))] {
            for cut in [full.len() / 2, full.len() - 20] {
                let e = render(&full[..cut], &s, &Limits::default(), later()).unwrap_err();
                assert!(matches!(e, Refused::NotRaster(_)), "cut at {cut}: {e}");
            }
        }
    }

    #[test]
    fn the_deadline_is_checked_between_steps() {
        let jpeg = jpeg_of(&gradient(300, 200));
        let s = spec(Some(50), None, Fit::Max, Format::Jpeg);
        let past = Instant::now() - std::time::Duration::from_millis(1);
        assert_eq!(
            render(&jpeg, &s, &Limits::default(), past),
            Err(Refused::TimedOut)
        );
    }

    #[test]
    fn the_pipeline_version_changes_with_its_output() {
        // If this fails, the pipeline's output changed: raise
        // PIPELINE_VERSION and write the new digests here.
        let jpeg = jpeg_of(&gradient(640, 480));
        let mut digests = Vec::new();
        for format in [Format::Jpeg, Format::Png, Format::Webp, Format::Avif] {
            let s = spec(Some(97), Some(61), Fit::Crop, format);
            let out = render(&jpeg, &s, &Limits::default(), later()).unwrap();
            digests.push(blake3::hash(&out).to_hex()[..16].to_string());
        }
        assert_eq!(PIPELINE_VERSION, 1);
        assert_eq!(digests, PINNED, "{digests:?}");
    }

    const PINNED: [&str; 4] = [
        "7eaeb1b66fee0d2e",
        "6f49370166342045",
        "592439a1ff023c16",
        "3d5f92b9182c2f48",
    ];
}
