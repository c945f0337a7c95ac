//! The image parameters of a URL (`w`, `h`, `fit`, `fmt`, `q`, `dpr`),
//! parsed once into typed values, and resolved against the source and the
//! request's `Accept` into a [`Spec`]: the normalised description of one
//! rendition, which names it in the cache and in its ETag. Pure.
//!
//! Only these keys trigger processing; any other key (`?v=3`, tracking
//! tags) is ignored. A bad value of one of ours is an error (400) whatever
//! the file is.

use std::fmt;

use percent_encoding::percent_decode_str;

/// How the image fills the box `w`×`h` (see `geometry.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Fit {
    /// Fits inside the box, keeping the aspect ratio; never enlarges.
    #[default]
    Max,
    /// Fits inside the box and fills the rest with a background
    /// (letterbox): the output is exactly the box.
    Pad,
    /// Fills the box, keeping the aspect ratio, cutting what is over
    /// around the centre: the output is exactly the box.
    Crop,
    /// The box exactly, whatever the aspect ratio.
    Stretch,
}

impl Fit {
    fn parse(v: &str) -> Option<Fit> {
        Some(match v {
            "max" => Fit::Max,
            "pad" => Fit::Pad,
            "crop" => Fit::Crop,
            "stretch" => Fit::Stretch,
            _ => return None,
        })
    }

    pub fn token(self) -> &'static str {
        match self {
            Fit::Max => "max",
            Fit::Pad => "pad",
            Fit::Crop => "crop",
            Fit::Stretch => "stretch",
        }
    }
}

/// An output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    Jpeg,
    Png,
    Webp,
    Avif,
}

impl Format {
    pub fn token(self) -> &'static str {
        match self {
            Format::Jpeg => "jpg",
            Format::Png => "png",
            Format::Webp => "webp",
            Format::Avif => "avif",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Jpeg => "image/jpeg",
            Format::Png => "image/png",
            Format::Webp => "image/webp",
            Format::Avif => "image/avif",
        }
    }

    /// Whether the format keeps transparency (else `pad` fills with white
    /// and transparent pixels are put on white).
    pub fn has_alpha(self) -> bool {
        !matches!(self, Format::Jpeg)
    }

    /// Whether `q` means anything to it.
    fn lossy(self) -> bool {
        !matches!(self, Format::Png)
    }
}

/// `fmt`: a format, or `auto` (the best the client accepts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormatChoice {
    Auto,
    Exact(Format),
}

/// The formats a source can be in, from its content type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SourceKind {
    Jpeg,
    Png,
    Webp,
    Gif,
}

impl SourceKind {
    /// The kind of a file by its content type; `None` for anything that is
    /// not a raster format we decode (HTML, SVG, …): served unchanged.
    pub fn of_content_type(content_type: &str) -> Option<SourceKind> {
        let essence = content_type.split(';').next().unwrap_or("").trim();
        Some(match essence.to_ascii_lowercase().as_str() {
            "image/jpeg" | "image/jpg" | "image/pjpeg" => SourceKind::Jpeg,
            "image/png" => SourceKind::Png,
            "image/webp" => SourceKind::Webp,
            "image/gif" => SourceKind::Gif,
            _ => return None,
        })
    }

    /// The output format when `fmt` is not given (a GIF becomes a PNG).
    pub fn default_format(self) -> Format {
        match self {
            SourceKind::Jpeg => Format::Jpeg,
            SourceKind::Png | SourceKind::Gif => Format::Png,
            SourceKind::Webp => Format::Webp,
        }
    }
}

/// Quality when `q` is not given.
pub const DEFAULT_QUALITY: u8 = 80;

/// A device pixel ratio, in tenths (10 to 30).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dpr(u8);

impl Dpr {
    /// `1`, `1.5`, `2.0`, `3`: one decimal at most, from 1 to 3.
    fn parse(v: &str) -> Option<Dpr> {
        let (whole, tenth) = match v.split_once('.') {
            Some((w, t)) if t.len() == 1 => (w, t),
            Some(_) => return None,
            None => (v, "0"),
        };
        if whole.len() != 1
            || !whole
                .bytes()
                .chain(tenth.bytes())
                .all(|b| b.is_ascii_digit())
        {
            return None;
        }
        let tenths = (whole.as_bytes()[0] - b'0') * 10 + (tenth.as_bytes()[0] - b'0');
        (10..=30).contains(&tenths).then_some(Dpr(tenths))
    }

    /// `n` multiplied by the ratio, rounded to the nearest pixel.
    fn apply(self, n: u32) -> u64 {
        (u64::from(n) * u64::from(self.0) + 5) / 10
    }
}

/// The image parameters of one URL, as given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Params {
    pub w: Option<u32>,
    pub h: Option<u32>,
    pub fit: Option<Fit>,
    pub fmt: Option<FormatChoice>,
    pub q: Option<u8>,
    pub dpr: Option<Dpr>,
}

/// Why a URL's image parameters are refused (400, with this as the body).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadParam {
    #[error("{key} is given more than once")]
    Twice { key: &'static str },
    #[error("bad value {value:?} for {key}: {expected}")]
    Value {
        key: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error(
        "the output would be {got} pixels {side}, over this cluster's limit of {max} (images.max_output)"
    )]
    TooLarge {
        side: &'static str,
        got: u64,
        max: u32,
    },
}

/// The keys that trigger processing.
const KEYS: [&str; 6] = ["w", "h", "fit", "fmt", "q", "dpr"];

impl Params {
    /// The image parameters of a query string: `Ok(None)` when it has none
    /// of ours (a plain static request), an error for a bad value or a key
    /// of ours given twice. `max_output` bounds `w` and `h` before `dpr`
    /// (see [`Params::resolve`] for after).
    pub fn parse(query: &str, max_output: u32) -> Result<Option<Params>, BadParam> {
        let mut p = Params::default();
        let mut any = false;
        let mut seen = [false; KEYS.len()];
        for pair in query.split('&') {
            let (raw_key, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
            let Some(i) = KEYS.iter().position(|k| *k == raw_key) else {
                continue;
            };
            let key = KEYS[i];
            if std::mem::replace(&mut seen[i], true) {
                return Err(BadParam::Twice { key });
            }
            any = true;
            let value = percent_decode_str(raw_value).decode_utf8_lossy();
            let bad = |expected| BadParam::Value {
                key,
                value: value.chars().take(64).collect(),
                expected,
            };
            match key {
                "w" | "h" => {
                    let n = pixels(&value).ok_or_else(|| bad("a whole number of pixels from 1"))?;
                    if n > max_output {
                        return Err(BadParam::TooLarge {
                            side: if key == "w" { "wide" } else { "high" },
                            got: n.into(),
                            max: max_output,
                        });
                    }
                    if key == "w" {
                        p.w = Some(n);
                    } else {
                        p.h = Some(n);
                    }
                }
                "fit" => {
                    p.fit =
                        Some(Fit::parse(&value).ok_or_else(|| bad("max, pad, crop or stretch"))?)
                }
                "fmt" => {
                    p.fmt = Some(match &*value {
                        "auto" => FormatChoice::Auto,
                        "jpg" | "jpeg" => FormatChoice::Exact(Format::Jpeg),
                        "png" => FormatChoice::Exact(Format::Png),
                        "webp" => FormatChoice::Exact(Format::Webp),
                        "avif" => FormatChoice::Exact(Format::Avif),
                        _ => return Err(bad("webp, jpg, png, avif or auto")),
                    })
                }
                "q" => {
                    p.q = Some(
                        pixels(&value)
                            .filter(|q| (1..=100).contains(q))
                            .and_then(|q| u8::try_from(q).ok())
                            .ok_or_else(|| bad("a whole number from 1 to 100"))?,
                    )
                }
                _ => {
                    p.dpr = Some(
                        Dpr::parse(&value)
                            .ok_or_else(|| bad("a number from 1 to 3 with one decimal at most"))?,
                    )
                }
            }
        }
        Ok(any.then_some(p))
    }

    /// Whether the response depends on the request's `Accept`.
    pub fn varies_by_accept(&self) -> bool {
        self.fmt == Some(FormatChoice::Auto)
    }

    /// The rendition these parameters ask of a source of this kind, for a
    /// client that sent this `Accept`: `dpr` multiplied in, the format and
    /// quality settled.
    pub fn resolve(
        &self,
        source: SourceKind,
        accept: Option<&str>,
        max_output: u32,
    ) -> Result<Spec, BadParam> {
        let scaled = |n: Option<u32>, side| -> Result<Option<u32>, BadParam> {
            let Some(n) = n else { return Ok(None) };
            let got = self.dpr.map_or(u64::from(n), |d| d.apply(n));
            u32::try_from(got)
                .ok()
                .filter(|g| *g <= max_output)
                .map(Some)
                .ok_or(BadParam::TooLarge {
                    side,
                    got,
                    max: max_output,
                })
        };
        let format = match self.fmt {
            Some(FormatChoice::Exact(f)) => f,
            Some(FormatChoice::Auto) => best_accepted(accept).unwrap_or(source.default_format()),
            None => source.default_format(),
        };
        Ok(Spec {
            width: scaled(self.w, "wide")?,
            height: scaled(self.h, "high")?,
            fit: self.fit.unwrap_or_default(),
            format,
            quality: if format.lossy() {
                self.q.unwrap_or(DEFAULT_QUALITY)
            } else {
                0
            },
        })
    }
}

/// A positive whole number of ASCII digits (no sign, no spaces).
fn pixels(v: &str) -> Option<u32> {
    if v.is_empty() || v.len() > 9 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok().filter(|n| *n > 0)
}

/// AVIF, else WebP, when `Accept` lists it with a quality above zero.
fn best_accepted(accept: Option<&str>) -> Option<Format> {
    let accept = accept?;
    let listed = |wanted: &str| {
        accept.split(',').any(|item| {
            let mut parts = item.split(';');
            let media = parts.next().unwrap_or("").trim();
            media.eq_ignore_ascii_case(wanted)
                && parts.all(|p| {
                    let p = p.trim();
                    !matches!(p.split_once('='), Some((k, v)) if k.trim().eq_ignore_ascii_case("q")
                        && v.trim().parse::<f32>().is_ok_and(|q| q <= 0.0))
                })
        })
    };
    [Format::Avif, Format::Webp]
        .into_iter()
        .find(|f| listed(f.content_type()))
}

/// One rendition, normalised: two URLs that ask for the same output (any
/// order of keys, `dpr` multiplied in, defaults filled, `fmt=auto`
/// settled) have equal specs. Its [`Display`](fmt::Display) form is the
/// rendition's name in the cache key and the ETag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Spec {
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub fit: Fit,
    pub format: Format,
    /// 1–100 for lossy formats, 0 for PNG (which has no quality).
    pub quality: u8,
}

impl fmt::Display for Spec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let side = |n: Option<u32>| n.map_or_else(|| "-".to_owned(), |n| n.to_string());
        write!(
            f,
            "w={},h={},fit={},fmt={},q={}",
            side(self.width),
            side(self.height),
            self.fit.token(),
            self.format.token(),
            self.quality
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(q: &str) -> Result<Option<Params>, BadParam> {
        Params::parse(q, 4096)
    }

    #[test]
    fn a_query_without_our_keys_is_a_plain_static_request() {
        for q in ["", "v=3", "utm_source=x&v=3", "width=800", "W=800", "ww=1"] {
            assert_eq!(parse(q), Ok(None), "{q}");
        }
    }

    #[test]
    fn our_keys_are_parsed_among_others() {
        let p = parse("v=3&w=800&fmt=webp&q=85&utm=a").unwrap().unwrap();
        assert_eq!(p.w, Some(800));
        assert_eq!(p.h, None);
        assert_eq!(p.fmt, Some(FormatChoice::Exact(Format::Webp)));
        assert_eq!(p.q, Some(85));
        let p = parse("h=60&fit=crop&dpr=1.5&fmt=jpeg").unwrap().unwrap();
        assert_eq!(
            (p.h, p.fit, p.dpr, p.fmt),
            (
                Some(60),
                Some(Fit::Crop),
                Some(Dpr(15)),
                Some(FormatChoice::Exact(Format::Jpeg))
            )
        );
        assert_eq!(parse("w=%38%30").unwrap().unwrap().w, Some(80));
    }

    #[test]
    fn bad_values_of_our_keys_are_refused_with_a_reason() {
        for q in [
            "w=-1",
            "w=abc",
            "w=0",
            "w=",
            "w",
            "w=1.5",
            "w=+5",
            "w= 5",
            "h=99999999999",
            "q=0",
            "q=101",
            "q=",
            "q=50.5",
            "fit=zoom",
            "fit=",
            "fmt=gif",
            "fmt=JPG",
            "dpr=0.5",
            "dpr=3.1",
            "dpr=1.25",
            "dpr=4",
            "dpr=x",
            "dpr=.5",
            "dpr=10",
        ] {
            let e = parse(q).unwrap_err();
            assert!(!e.to_string().contains('\n'), "{q}: one line");
            assert!(
                matches!(e, BadParam::Value { .. } | BadParam::TooLarge { .. }),
                "{q}: {e}"
            );
        }
        assert_eq!(
            parse("w=5000").unwrap_err().to_string(),
            "the output would be 5000 pixels wide, over this cluster's limit of 4096 (images.max_output)"
        );
        assert_eq!(
            parse("fit=zoom").unwrap_err().to_string(),
            "bad value \"zoom\" for fit: max, pad, crop or stretch"
        );
    }

    #[test]
    fn a_key_of_ours_given_twice_is_refused() {
        assert_eq!(parse("w=1&w=1"), Err(BadParam::Twice { key: "w" }));
        assert_eq!(parse("q=5&v=1&q=6"), Err(BadParam::Twice { key: "q" }));
        assert_eq!(parse("v=1&v=2&w=3").unwrap().unwrap().w, Some(3));
    }

    #[test]
    fn dpr_takes_one_decimal_from_1_to_3() {
        for (v, tenths) in [
            ("1", 10),
            ("1.0", 10),
            ("1.5", 15),
            ("2", 20),
            ("3.0", 30),
            ("2.9", 29),
        ] {
            assert_eq!(Dpr::parse(v), Some(Dpr(tenths)), "{v}");
        }
    }

    fn resolve(q: &str, source: SourceKind, accept: Option<&str>) -> Result<Spec, BadParam> {
        parse(q).unwrap().unwrap().resolve(source, accept, 4096)
    }

    #[test]
    fn dpr_multiplies_the_box_and_the_result_is_bounded() {
        let s = resolve("w=801&h=100&dpr=1.5", SourceKind::Jpeg, None).unwrap();
        assert_eq!((s.width, s.height), (Some(1202), Some(150)));
        assert_eq!(
            resolve("w=2000&dpr=3", SourceKind::Jpeg, None),
            Err(BadParam::TooLarge {
                side: "wide",
                got: 6000,
                max: 4096
            })
        );
    }

    #[test]
    fn defaults_are_filled_so_equal_requests_share_one_spec() {
        let a = resolve("w=800", SourceKind::Jpeg, None).unwrap();
        let b = resolve("fit=max&q=80&fmt=jpg&w=800&v=2", SourceKind::Jpeg, None).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.to_string(), "w=800,h=-,fit=max,fmt=jpg,q=80");
        // PNG has no quality: q does not split its renditions.
        let p = resolve("w=8&q=20", SourceKind::Png, None).unwrap();
        assert_eq!(p, resolve("w=8", SourceKind::Png, None).unwrap());
        assert_eq!(p.quality, 0);
        // A GIF becomes a PNG; a WebP stays a WebP.
        assert_eq!(
            resolve("w=8", SourceKind::Gif, None).unwrap().format,
            Format::Png
        );
        assert_eq!(
            resolve("w=8", SourceKind::Webp, None).unwrap().format,
            Format::Webp
        );
    }

    #[test]
    fn fmt_auto_picks_avif_then_webp_then_the_source_format() {
        let chrome = "image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8";
        let old = "image/webp,*/*";
        let none = "image/png,image/*;q=0.8,*/*;q=0.5";
        let refused = "image/avif;q=0,image/webp;q=0.0";
        for (accept, source, want) in [
            (Some(chrome), SourceKind::Jpeg, Format::Avif),
            (Some(old), SourceKind::Jpeg, Format::Webp),
            (Some(none), SourceKind::Jpeg, Format::Jpeg),
            (Some(none), SourceKind::Gif, Format::Png),
            (Some(refused), SourceKind::Png, Format::Png),
            (Some("IMAGE/WEBP ; q=0.5"), SourceKind::Png, Format::Webp),
            (None, SourceKind::Jpeg, Format::Jpeg),
        ] {
            assert_eq!(
                resolve("fmt=auto", source, accept).unwrap().format,
                want,
                "{accept:?}"
            );
        }
        assert!(parse("fmt=auto").unwrap().unwrap().varies_by_accept());
        assert!(!parse("fmt=webp").unwrap().unwrap().varies_by_accept());
    }

    #[test]
    fn only_raster_content_types_are_sources() {
        assert_eq!(
            SourceKind::of_content_type("image/jpeg"),
            Some(SourceKind::Jpeg)
        );
        assert_eq!(
            SourceKind::of_content_type("image/PNG; x=y"),
            Some(SourceKind::Png)
        );
        for t in [
            "text/html; charset=utf-8",
            "image/svg+xml",
            "application/octet-stream",
            "image/avif",
        ] {
            assert_eq!(SourceKind::of_content_type(t), None, "{t}");
        }
    }
}
