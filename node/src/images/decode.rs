//! Source bytes to upright 8-bit pixels, within the memory bound.
//!
//! JPEG goes through libjpeg-turbo (`turbojpeg`), which can decode at 1/2,
//! 1/4 or 1/8 of the size in the DCT itself (shrink-on-load, as libvips
//! does): a 4000×3000 photo wanted 800 wide is decoded at 1000×750, a
//! sixteenth of the pixels. PNG, WebP, GIF and CMYK JPEG go through the
//! `image` crate's decoders, with its allocation limit set to ours. EXIF
//! orientation is applied here, so everything after sees the image upright.

use std::io::Cursor;

use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader};

use super::geometry::Size;
use super::params::SourceKind;
use super::pipeline::Refused;
use super::probe::Probe;

/// Upright pixels: RGB, or RGBA (not premultiplied) when the source can
/// be transparent.
pub struct Pixels {
    pub size: Size,
    pub alpha: bool,
    pub data: Vec<u8>,
}

impl Pixels {
    pub fn channels(&self) -> usize {
        if self.alpha { 4 } else { 3 }
    }
}

/// What decoding gives.
pub struct Decoded {
    pub pixels: Pixels,
    /// The whole source's upright size (`pixels` may be smaller: shrunk
    /// on load).
    pub source: Size,
    /// The embedded ICC profile, if any.
    pub icc: Option<Vec<u8>>,
}

/// The size after an EXIF orientation (5–8 turn it a quarter).
pub fn upright(size: Size, orientation: u8) -> Size {
    if (5..=8).contains(&orientation) {
        Size {
            w: size.h,
            h: size.w,
        }
    } else {
        size
    }
}

/// Decodes `bytes`, which `probe` described. `shrink_for` gets the
/// upright size of the whole source and says by how much a JPEG may be
/// shrunk while decoded (1, 2, 4 or 8). No more than `max_bytes` of
/// pixels are allocated.
pub fn decode(
    bytes: &[u8],
    probe: &Probe,
    shrink_for: impl FnOnce(Size) -> u32,
    max_bytes: u64,
) -> Result<Decoded, Refused> {
    match &probe.jpeg {
        Some(header) if header.components != 4 => {
            let source = upright(probe.size, header.orientation);
            let shrink = shrink_for(source);
            let pixels = jpeg(bytes, shrink, header.orientation, max_bytes)?;
            Ok(Decoded {
                pixels,
                source,
                icc: header.icc.clone(),
            })
        }
        _ => other(bytes, probe.kind, max_bytes),
    }
}

fn too_large(what: u64, max: u64) -> Refused {
    Refused::TooLarge(format!(
        "decoding it takes {} MiB, over this cluster's limit of {} MiB (images.max_decode_mb)",
        what.div_ceil(1 << 20),
        max >> 20
    ))
}

fn not_raster(e: impl std::fmt::Display) -> Refused {
    Refused::NotRaster(format!("it does not decode: {e}"))
}

fn jpeg(bytes: &[u8], shrink: u32, orientation: u8, max_bytes: u64) -> Result<Pixels, Refused> {
    let mut d = turbojpeg::Decompressor::new().map_err(not_raster)?;
    let factor = turbojpeg::ScalingFactor::new(1, shrink.clamp(1, 8) as usize);
    let header = d.read_header(bytes).map_err(not_raster)?.scaled(factor);
    let need = header.width as u64 * header.height as u64 * 3;
    if need > max_bytes {
        return Err(too_large(need, max_bytes));
    }
    d.set_scaling_factor(factor).map_err(not_raster)?;
    let mut image = turbojpeg::Image {
        pixels: vec![0u8; need as usize],
        width: header.width,
        pitch: header.width * 3,
        height: header.height,
        format: turbojpeg::PixelFormat::RGB,
    };
    // A truncated or corrupt file is an error here (libjpeg-turbo's
    // warnings included), so it is served unchanged, never half grey.
    d.decompress(bytes, image.as_deref_mut())
        .map_err(not_raster)?;
    let size = Size {
        w: u32::try_from(header.width).map_err(not_raster)?,
        h: u32::try_from(header.height).map_err(not_raster)?,
    };
    let rgb = image::RgbImage::from_raw(size.w, size.h, image.pixels)
        .ok_or_else(|| not_raster("decoded buffer size"))?;
    let mut dynamic = DynamicImage::ImageRgb8(rgb);
    if let Some(o) = Orientation::from_exif(orientation) {
        dynamic.apply_orientation(o);
    }
    Ok(into_pixels(dynamic))
}

fn other(bytes: &[u8], kind: SourceKind, max_bytes: u64) -> Result<Decoded, Refused> {
    let format = match kind {
        SourceKind::Jpeg => ImageFormat::Jpeg,
        SourceKind::Png => ImageFormat::Png,
        SourceKind::Webp => ImageFormat::WebP,
        SourceKind::Gif => ImageFormat::Gif,
    };
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(max_bytes);
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(refusal)?;
    // The decoded image, and its 8-bit RGB(A) copy when it is not that
    // already (16-bit and float images).
    let (w, h) = decoder.dimensions();
    let wide = decoder.color_type().bytes_per_pixel() > 4;
    let need = decoder.total_bytes().saturating_add(if wide {
        u64::from(w) * u64::from(h) * 4
    } else {
        0
    });
    if need > max_bytes {
        return Err(too_large(need, max_bytes));
    }
    let icc = decoder.icc_profile().ok().flatten();
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let mut dynamic = DynamicImage::from_decoder(decoder).map_err(refusal)?;
    dynamic.apply_orientation(orientation);
    let source = Size {
        w: dynamic.width(),
        h: dynamic.height(),
    };
    Ok(Decoded {
        pixels: into_pixels(dynamic),
        source,
        icc,
    })
}

fn refusal(e: image::ImageError) -> Refused {
    match e {
        image::ImageError::Limits(l) => Refused::TooLarge(format!(
            "decoding it would pass this cluster's limits (images.max_decode_mb): {l}"
        )),
        e => not_raster(e),
    }
}

/// 8-bit RGB or RGBA, whatever came out of the decoder.
fn into_pixels(image: DynamicImage) -> Pixels {
    let size = Size {
        w: image.width(),
        h: image.height(),
    };
    if image.color().has_alpha() {
        Pixels {
            size,
            alpha: true,
            data: image.into_rgba8().into_raw(),
        }
    } else {
        Pixels {
            size,
            alpha: false,
            data: image.into_rgb8().into_raw(),
        }
    }
}
