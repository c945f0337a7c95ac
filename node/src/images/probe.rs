//! What a source file is, read from its header before any pixel is
//! decoded: its format by magic bytes (the content type only nominates a
//! file), its stored size, and whether it is a still image. For JPEG also
//! its EXIF orientation, ICC profile and colour components (the other
//! formats' decoders give those). Pure, and never trusts a length it read.

use super::geometry::Size;
use super::params::SourceKind;

/// Why a file is served unchanged rather than processed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotRaster {
    #[error("not a JPEG, PNG, WebP or GIF file")]
    UnknownFormat,
    #[error("the header is cut short or malformed")]
    BadHeader,
    #[error("an animation")]
    Animated,
    #[error("the image has no pixels")]
    Empty,
}

/// What the header says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub kind: SourceKind,
    /// As stored, before orientation.
    pub size: Size,
    /// JPEG only (the other decoders report their own).
    pub jpeg: Option<JpegHeader>,
}

/// What a JPEG's segments before its first scan say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JpegHeader {
    /// EXIF orientation, 1–8 (1 when absent or unreadable).
    pub orientation: u8,
    /// The ICC profile, reassembled from its APP2 pieces.
    pub icc: Option<Vec<u8>>,
    /// Colour components: 1 (grey), 3 (YCbCr/RGB) or 4 (CMYK/YCCK).
    pub components: u8,
}

/// Reads the header of `bytes`.
pub fn probe(bytes: &[u8]) -> Result<Probe, NotRaster> {
    let (kind, size, jpeg) = if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        let (size, header) = jpeg(bytes)?;
        (SourceKind::Jpeg, size, Some(header))
    } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        (SourceKind::Png, png(bytes)?, None)
    } else if bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a") {
        (SourceKind::Gif, gif(bytes)?, None)
    } else if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        (SourceKind::Webp, webp(bytes)?, None)
    } else {
        return Err(NotRaster::UnknownFormat);
    };
    if size.w == 0 || size.h == 0 {
        return Err(NotRaster::Empty);
    }
    Ok(Probe { kind, size, jpeg })
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn le16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn le24(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at + 3)?;
    Some(u32::from(s[0]) | u32::from(s[1]) << 8 | u32::from(s[2]) << 16)
}

/// Walks a JPEG's segments up to the first scan.
fn jpeg(b: &[u8]) -> Result<(Size, JpegHeader), NotRaster> {
    let mut at = 2;
    let mut size = None;
    let mut header = JpegHeader {
        orientation: 1,
        ..Default::default()
    };
    let mut icc_pieces: Vec<(u8, &[u8])> = Vec::new();
    loop {
        // Markers may be padded with any number of 0xFF.
        if *b.get(at).ok_or(NotRaster::BadHeader)? != 0xFF {
            return Err(NotRaster::BadHeader);
        }
        while b.get(at) == Some(&0xFF) {
            at += 1;
        }
        let marker = *b.get(at).ok_or(NotRaster::BadHeader)?;
        at += 1;
        match marker {
            0xD8 | 0x01 | 0xD0..=0xD7 => continue,
            0xD9 | 0xDA => break,
            _ => {}
        }
        let len = usize::from(be16(b, at).ok_or(NotRaster::BadHeader)?);
        let body = b.get(at + 2..at + len).ok_or(NotRaster::BadHeader)?;
        match marker {
            0xC0..=0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF => {
                let h = be16(body, 1).ok_or(NotRaster::BadHeader)?;
                let w = be16(body, 3).ok_or(NotRaster::BadHeader)?;
                header.components = *body.get(5).ok_or(NotRaster::BadHeader)?;
                size = Some(Size {
                    w: u32::from(w),
                    h: u32::from(h),
                });
            }
            0xE1 => {
                if let Some(tiff) = body.strip_prefix(b"Exif\0\0") {
                    header.orientation = exif_orientation(tiff).unwrap_or(1);
                }
            }
            0xE2 => {
                if let Some(rest) = body.strip_prefix(b"ICC_PROFILE\0")
                    && rest.len() >= 2
                {
                    icc_pieces.push((rest[0], &rest[2..]));
                }
            }
            _ => {}
        }
        at += len;
    }
    icc_pieces.sort_by_key(|p| p.0);
    if !icc_pieces.is_empty() {
        header.icc = Some(icc_pieces.iter().flat_map(|p| p.1).copied().collect());
    }
    let size = size.ok_or(NotRaster::BadHeader)?;
    Ok((size, header))
}

/// The orientation tag (0x0112) of IFD0 of an EXIF (TIFF) block.
pub fn exif_orientation(tiff: &[u8]) -> Option<u8> {
    let little = match tiff.get(..4)? {
        b"II*\0" => true,
        b"MM\0*" => false,
        _ => return None,
    };
    let u16_at = |at: usize| -> Option<u16> {
        let s: [u8; 2] = tiff.get(at..at + 2)?.try_into().ok()?;
        Some(if little {
            u16::from_le_bytes(s)
        } else {
            u16::from_be_bytes(s)
        })
    };
    let u32_at = |at: usize| -> Option<u32> {
        let s: [u8; 4] = tiff.get(at..at + 4)?.try_into().ok()?;
        Some(if little {
            u32::from_le_bytes(s)
        } else {
            u32::from_be_bytes(s)
        })
    };
    let ifd = usize::try_from(u32_at(4)?).ok()?;
    let entries = usize::from(u16_at(ifd)?);
    (0..entries.min(512)).find_map(|i| {
        let e = ifd + 2 + i * 12;
        // Tag 0x0112, type SHORT, one value.
        if u16_at(e)? == 0x0112 && u16_at(e + 2)? == 3 {
            let v = u16_at(e + 8)?;
            (1..=8).contains(&v).then_some(v as u8)
        } else {
            None
        }
    })
}

/// A PNG's IHDR size; an `acTL` chunk before the image data makes it an
/// animation (APNG).
fn png(b: &[u8]) -> Result<Size, NotRaster> {
    if b.get(12..16) != Some(b"IHDR") {
        return Err(NotRaster::BadHeader);
    }
    let size = Size {
        w: be32(b, 16).ok_or(NotRaster::BadHeader)?,
        h: be32(b, 20).ok_or(NotRaster::BadHeader)?,
    };
    let mut at = 8;
    while let (Some(len), Some(kind)) = (be32(b, at), b.get(at + 4..at + 8)) {
        match kind {
            b"acTL" => return Err(NotRaster::Animated),
            b"IDAT" | b"IEND" => break,
            _ => {}
        }
        at = at
            .checked_add(12)
            .and_then(|a| a.checked_add(usize::try_from(len).ok()?))
            .ok_or(NotRaster::BadHeader)?;
    }
    Ok(size)
}

/// A GIF's logical screen; more than one image in it makes it an
/// animation. Walks the blocks without decoding any.
fn gif(b: &[u8]) -> Result<Size, NotRaster> {
    let w = le16(b, 6).ok_or(NotRaster::BadHeader)?;
    let h = le16(b, 8).ok_or(NotRaster::BadHeader)?;
    let flags = *b.get(10).ok_or(NotRaster::BadHeader)?;
    let table = |flags: u8| {
        if flags & 0x80 != 0 {
            3usize << ((flags & 7) + 1)
        } else {
            0
        }
    };
    let mut at = 13 + table(flags);
    let skip_blocks = |mut at: usize| -> Option<usize> {
        loop {
            let n = usize::from(*b.get(at)?);
            at += 1 + n;
            if n == 0 {
                return Some(at);
            }
        }
    };
    let mut images = 0;
    loop {
        match b.get(at) {
            Some(0x2C) => {
                images += 1;
                if images > 1 {
                    return Err(NotRaster::Animated);
                }
                let flags = *b.get(at + 9).ok_or(NotRaster::BadHeader)?;
                // Descriptor, local table, LZW code size, then data blocks.
                at = skip_blocks(at + 10 + table(flags) + 1).ok_or(NotRaster::BadHeader)?;
            }
            Some(0x21) => at = skip_blocks(at + 2).ok_or(NotRaster::BadHeader)?,
            // The trailer, or a file cut after its first image: the
            // decoder decides whether what is there is an image.
            _ => break,
        }
    }
    if images == 0 {
        return Err(NotRaster::Empty);
    }
    Ok(Size {
        w: u32::from(w),
        h: u32::from(h),
    })
}

/// A WebP's canvas (VP8X) or frame size (VP8, VP8L); the VP8X animation
/// flag makes it an animation.
fn webp(b: &[u8]) -> Result<Size, NotRaster> {
    let bad = || NotRaster::BadHeader;
    match b.get(12..16).ok_or_else(bad)? {
        b"VP8X" => {
            let flags = *b.get(20).ok_or_else(bad)?;
            if flags & 0x02 != 0 {
                return Err(NotRaster::Animated);
            }
            Ok(Size {
                w: le24(b, 24).ok_or_else(bad)? + 1,
                h: le24(b, 27).ok_or_else(bad)? + 1,
            })
        }
        b"VP8 " => {
            // Frame tag (3 bytes), start code 9d 01 2a, then 14-bit sizes.
            if b.get(23..26) != Some(&[0x9d, 0x01, 0x2a]) {
                return Err(bad());
            }
            Ok(Size {
                w: u32::from(le16(b, 26).ok_or_else(bad)? & 0x3fff),
                h: u32::from(le16(b, 28).ok_or_else(bad)? & 0x3fff),
            })
        }
        b"VP8L" => {
            if b.get(20) != Some(&0x2f) {
                return Err(bad());
            }
            let bits = u32::from(le16(b, 21).ok_or_else(bad)?)
                | u32::from(le16(b, 23).ok_or_else(bad)?) << 16;
            Ok(Size {
                w: (bits & 0x3fff) + 1,
                h: ((bits >> 14) & 0x3fff) + 1,
            })
        }
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal JPEG header: SOI, APP1 EXIF with this orientation (big
    /// endian), two APP2 ICC pieces out of order, SOF0, SOS.
    fn jpeg_header(w: u16, h: u16, orientation: u16) -> Vec<u8> {
        let mut b = vec![0xFF, 0xD8];
        let mut tiff = b"MM\0*\0\0\0\x08".to_vec();
        tiff.extend_from_slice(&1u16.to_be_bytes());
        tiff.extend_from_slice(&0x0112u16.to_be_bytes());
        tiff.extend_from_slice(&3u16.to_be_bytes());
        tiff.extend_from_slice(&1u32.to_be_bytes());
        tiff.extend_from_slice(&orientation.to_be_bytes());
        tiff.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        let mut seg = |marker: u8, body: &[u8]| {
            b.extend_from_slice(&[0xFF, marker]);
            b.extend_from_slice(&(body.len() as u16 + 2).to_be_bytes());
            b.extend_from_slice(body);
        };
        seg(0xE1, &[b"Exif\0\0".as_slice(), &tiff].concat());
        seg(
            0xE2,
            &[b"ICC_PROFILE\0\x02\x02".as_slice(), b"world"].concat(),
        );
        seg(
            0xE2,
            &[b"ICC_PROFILE\0\x01\x02".as_slice(), b"hello "].concat(),
        );
        let mut sof = vec![8];
        sof.extend_from_slice(&h.to_be_bytes());
        sof.extend_from_slice(&w.to_be_bytes());
        sof.extend_from_slice(&[3, 1, 0x22, 0, 2, 0x11, 1, 3, 0x11, 1]);
        seg(0xC0, &sof);
        seg(0xDA, &[1, 1, 0, 0, 63, 0]);
        b
    }

    #[test]
    fn a_jpeg_header_gives_size_orientation_and_icc() {
        let p = probe(&jpeg_header(4000, 3000, 6)).unwrap();
        assert_eq!(p.kind, SourceKind::Jpeg);
        assert_eq!(p.size, Size { w: 4000, h: 3000 });
        let j = p.jpeg.unwrap();
        assert_eq!(j.orientation, 6);
        assert_eq!(j.components, 3);
        assert_eq!(j.icc.as_deref(), Some(&b"hello world"[..]));
    }

    #[test]
    fn a_cut_or_garbled_header_is_not_a_raster_never_a_panic() {
        let full = jpeg_header(64, 64, 1);
        for n in 0..full.len() - 10 {
            assert!(probe(&full[..n]).is_err(), "cut at {n}");
        }
        let mut garbled = full.clone();
        let sof = garbled.windows(2).position(|m| m == [0xFF, 0xC0]).unwrap();
        garbled[sof] = 0x00;
        assert_eq!(probe(&garbled), Err(NotRaster::BadHeader));
        assert_eq!(probe(b"<!doctype html>"), Err(NotRaster::UnknownFormat));
        assert_eq!(probe(b"<svg xmlns=..."), Err(NotRaster::UnknownFormat));
        // Random bytes after each magic never panic.
        let mut x: u32 = 7;
        for magic in [
            &b"\xFF\xD8\xFF"[..],
            b"\x89PNG\r\n\x1a\n",
            b"GIF89a",
            b"RIFF\0\0\0\0WEBPVP8X",
        ] {
            for _ in 0..2000 {
                let mut b = magic.to_vec();
                for _ in 0..(x % 64) {
                    x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    b.push((x >> 16) as u8);
                }
                let _ = probe(&b);
            }
        }
    }

    #[test]
    fn exif_orientation_reads_both_byte_orders() {
        let le = b"II*\0\x08\0\0\0\x01\0\x12\x01\x03\0\x01\0\0\0\x08\0\0\0";
        assert_eq!(exif_orientation(le), Some(8));
        assert_eq!(exif_orientation(b"II*\0\xff\xff\xff\xff"), None);
        assert_eq!(exif_orientation(b"XX"), None);
    }

    #[test]
    fn png_size_and_animation() {
        let mut b = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
        b.extend_from_slice(&100_000u32.to_be_bytes());
        b.extend_from_slice(&100_000u32.to_be_bytes());
        b.extend_from_slice(&[8, 6, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            probe(&b).unwrap().size,
            Size {
                w: 100_000,
                h: 100_000
            }
        );
        let mut anim = b.clone();
        anim.extend_from_slice(b"\0\0\0\x08acTL\0\0\0\x02\0\0\0\0\0\0\0\0");
        assert_eq!(probe(&anim), Err(NotRaster::Animated));
    }

    #[test]
    fn gif_frames_are_counted_without_decoding() {
        // Header, 2x1 screen, no global table, one image, trailer.
        let frame = [0x2C, 0, 0, 0, 0, 2, 0, 1, 0, 0, 2, 2, 0x4C, 0x01, 0];
        let mut one = b"GIF89a\x02\0\x01\0\0\0\0".to_vec();
        one.extend_from_slice(&frame);
        one.push(0x3B);
        assert_eq!(probe(&one).unwrap().size, Size { w: 2, h: 1 });
        let mut two = b"GIF89a\x02\0\x01\0\0\0\0".to_vec();
        two.extend_from_slice(&frame);
        two.extend_from_slice(&[0x21, 0xF9, 4, 0, 10, 0, 0, 0]);
        two.extend_from_slice(&frame);
        two.push(0x3B);
        assert_eq!(probe(&two), Err(NotRaster::Animated));
    }

    #[test]
    fn webp_canvas_and_animation_flag() {
        let mut b = b"RIFF\0\0\0\0WEBPVP8X\x0a\0\0\0".to_vec();
        b.extend_from_slice(&[0, 0, 0, 0]);
        b.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(
            probe(&b).unwrap().size,
            Size {
                w: 1 << 24,
                h: 1 << 24
            }
        );
        b[20] = 0x02;
        assert_eq!(probe(&b), Err(NotRaster::Animated));
    }
}
