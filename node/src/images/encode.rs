//! Pixels to bytes in the output format. Nothing but pixels goes out: no
//! EXIF (so no GPS position), no XMP, no ICC profile (the pixels are sRGB
//! by then, which every decoder assumes of an image without one).
//!
//! - JPEG: libjpeg-turbo, baseline, 4:2:0 below q 90 and 4:4:4 from it
//!   (as libvips does).
//! - WebP: libwebp, lossy, method 4 (libwebp's and libvips' default).
//! - PNG: the `image` crate's encoder, 8 bits per channel.
//! - AVIF: rav1e through `ravif`, speed 8 (its slowest presets take
//!   seconds per photo), one thread (the pool gives the parallelism).

use super::decode::Pixels;
use super::params::Format;
use super::pipeline::Refused;

/// AVIF encoder speed (1 slowest … 10 fastest).
const AVIF_SPEED: u8 = 8;

fn failed(e: impl std::fmt::Display) -> Refused {
    Refused::Failed(format!("encoding failed: {e}"))
}

/// Encodes `pixels` (RGBA only for formats that keep alpha).
pub fn encode(pixels: &Pixels, format: Format, quality: u8) -> Result<Vec<u8>, Refused> {
    let Pixels { size, alpha, data } = pixels;
    let (w, h) = (size.w, size.h);
    match format {
        Format::Jpeg => {
            let mut c = turbojpeg::Compressor::new().map_err(failed)?;
            c.set_quality(i32::from(quality)).map_err(failed)?;
            c.set_subsamp(if quality >= 90 {
                turbojpeg::Subsamp::None
            } else {
                turbojpeg::Subsamp::Sub2x2
            })
            .map_err(failed)?;
            let (channels, pf) = if *alpha {
                (4, turbojpeg::PixelFormat::RGBA)
            } else {
                (3, turbojpeg::PixelFormat::RGB)
            };
            let image = turbojpeg::Image {
                pixels: &data[..],
                width: w as usize,
                pitch: w as usize * channels,
                height: h as usize,
                format: pf,
            };
            c.compress_to_vec(image).map_err(failed)
        }
        Format::Webp => {
            let e = if *alpha {
                webp::Encoder::from_rgba(data, w, h)
            } else {
                webp::Encoder::from_rgb(data, w, h)
            };
            let out = e
                .encode_simple(false, f32::from(quality))
                .map_err(|e| failed(format!("{e:?}")))?;
            Ok(out.to_vec())
        }
        Format::Png => {
            use image::ImageEncoder;
            let mut out = Vec::new();
            let color = if *alpha {
                image::ExtendedColorType::Rgba8
            } else {
                image::ExtendedColorType::Rgb8
            };
            image::codecs::png::PngEncoder::new(&mut out)
                .write_image(data, w, h, color)
                .map_err(failed)?;
            Ok(out)
        }
        Format::Avif => {
            let encoder = ravif::Encoder::new()
                .with_quality(f32::from(quality))
                .with_speed(AVIF_SPEED)
                .with_num_threads(Some(1));
            let (w, h) = (w as usize, h as usize);
            let encoded = if *alpha {
                let px: Vec<ravif::RGBA8> = data
                    .chunks_exact(4)
                    .map(|c| ravif::RGBA8::new(c[0], c[1], c[2], c[3]))
                    .collect();
                encoder.encode_rgba(ravif::Img::new(&px[..], w, h))
            } else {
                let px: Vec<ravif::RGB8> = data
                    .chunks_exact(3)
                    .map(|c| ravif::RGB8::new(c[0], c[1], c[2]))
                    .collect();
                encoder.encode_rgb(ravif::Img::new(&px[..], w, h))
            };
            Ok(encoded.map_err(failed)?.avif_file)
        }
    }
}
