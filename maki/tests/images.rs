//! Images on the fly on real test hosts: the example site's photo and
//! generated sources asked with `?w&h&fit&fmt&q&dpr` through `curl` from
//! inside the test network, every output checked with an independent
//! decoder (Debian's `djpeg`, `dwebp`, `pngcheck`, `avifdec`); hostile
//! sources answered with the right status; a flood of distinct renditions
//! refused with 503 while static files and DNS are still answered. Needs
//! root.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failure is a panic

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use image::{ImageEncoder, Rgb, RgbImage, Rgba, RgbaImage};
use makiatto_harness::cpu::proc_kib;
use makiatto_harness::netns::daemon_pid;
use makiatto_harness::{Cluster, copy_examples, require_root, wait_until};

/// Status, head and body of one `curl` from the test host `vector` to
/// `server` for `example.test`.
fn get(c: &Cluster, server: &str, path: &str, extra: &[&str]) -> (u16, String, Vec<u8>) {
    get_from(c, server, "example.test", path, extra)
}

/// [`get`] for the site named `host`.
fn get_from(
    c: &Cluster,
    server: &str,
    host: &str,
    path: &str,
    extra: &[&str],
) -> (u16, String, Vec<u8>) {
    let url = format!("http://{server}{path}");
    let host = format!("Host: {host}");
    let mut cmd = c.command(&[
        "local",
        "exec",
        "vector",
        "--",
        "curl",
        "-s",
        "--max-time",
        "60",
        "-D",
        "/dev/stderr",
        "-H",
        &host,
    ]);
    cmd.args(extra).arg(&url);
    let out = cmd.output().unwrap();
    let head = String::from_utf8_lossy(&out.stderr).into_owned();
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head, out.stdout)
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Pixels decoded by a Debian tool, never by our own code: width,
/// height, channels and the samples.
struct Decoded {
    w: usize,
    h: usize,
    channels: usize,
    data: Vec<u8>,
}

impl Decoded {
    fn at(&self, x: usize, y: usize) -> &[u8] {
        let i = (y * self.w + x) * self.channels;
        &self.data[i..i + self.channels]
    }
}

/// Decodes `bytes` with the tool for `format` (`jpg`, `webp`, `png`,
/// `avif`); panics with the tool's words if it refuses them.
fn decode(format: &str, bytes: &[u8]) -> Decoded {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join(format!("in.{format}"));
    std::fs::write(&input, bytes).unwrap();
    let run = |cmd: &mut Command| {
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{cmd:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    match format {
        "jpg" => pnm(&run(Command::new("djpeg").arg("-pnm").arg(&input))),
        "webp" => {
            let out = dir.path().join("out.pam");
            run(Command::new("dwebp")
                .arg(&input)
                .arg("-pam")
                .arg("-o")
                .arg(&out));
            pam(&std::fs::read(out).unwrap())
        }
        "png" => {
            let text = run(Command::new("pngcheck").arg("-v").arg(&input));
            assert!(String::from_utf8_lossy(&text).contains("No errors"));
            // pngcheck checks every chunk; Pillow gives the samples.
            let out = dir.path().join("out.pam");
            run(Command::new("/usr/bin/python3").args([
                "-c",
                "import sys; from PIL import Image\n\
                 im = Image.open(sys.argv[1]).convert('RGBA')\n\
                 head = b'P7\\nWIDTH %d\\nHEIGHT %d\\nDEPTH 4\\nMAXVAL 255\\nENDHDR\\n' % im.size\n\
                 open(sys.argv[2], 'wb').write(head + im.tobytes())",
                input.to_str().unwrap(),
                out.to_str().unwrap(),
            ]));
            pam(&std::fs::read(out).unwrap())
        }
        "avif" => {
            let out = dir.path().join("out.png");
            run(Command::new("avifdec").arg(&input).arg(&out));
            decode("png", &std::fs::read(out).unwrap())
        }
        _ => panic!("no decoder for {format}"),
    }
}

/// A binary PPM/PGM (`P6`/`P5`) as djpeg writes it.
fn pnm(b: &[u8]) -> Decoded {
    let mut fields = Vec::new();
    let mut at = 0;
    while fields.len() < 4 {
        while b[at].is_ascii_whitespace() {
            at += 1;
        }
        let start = at;
        while !b[at].is_ascii_whitespace() {
            at += 1;
        }
        fields.push(String::from_utf8_lossy(&b[start..at]).into_owned());
    }
    let channels = if fields[0] == "P6" { 3 } else { 1 };
    Decoded {
        w: fields[1].parse().unwrap(),
        h: fields[2].parse().unwrap(),
        channels,
        data: b[at + 1..].to_vec(),
    }
}

/// A PAM (`P7`) as dwebp writes it.
fn pam(b: &[u8]) -> Decoded {
    let end = b.windows(7).position(|w| w == b"ENDHDR\n").unwrap();
    let head = String::from_utf8_lossy(&b[..end]);
    let field = |name: &str| -> usize {
        head.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap()
    };
    Decoded {
        w: field("WIDTH"),
        h: field("HEIGHT"),
        channels: field("DEPTH"),
        data: b[end + 7..].to_vec(),
    }
}

/// A test photo: a smooth gradient with a red top-left quarter (to see
/// where orientation put it).
fn photo(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        if x < w / 4 && y < h / 4 {
            Rgb([230, 20, 20])
        } else {
            Rgb([40, (x * 200 / w) as u8 + 30, (y * 200 / h) as u8 + 30])
        }
    })
}

fn jpeg(img: &RgbImage) -> Vec<u8> {
    jpeg_with_icc(img, None)
}

/// A JPEG carrying the ICC profile `icc`, if any.
fn jpeg_with_icc(img: &RgbImage, icc: Option<Vec<u8>>) -> Vec<u8> {
    let mut out = Vec::new();
    let mut encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 92);
    if let Some(icc) = icc {
        encoder.set_icc_profile(icc).unwrap();
    }
    encoder
        .write_image(
            img,
            img.width(),
            img.height(),
            image::ExtendedColorType::Rgb8,
        )
        .unwrap();
    out
}

/// `jpeg` with an EXIF block (orientation, and a GPS pointer) after SOI.
fn with_exif(jpeg: &[u8], orientation: u16) -> Vec<u8> {
    let mut tiff = b"MM\0*\0\0\0\x08\0\x02".to_vec();
    for (tag, kind, value) in [
        (0x0112u16, 3u16, u32::from(orientation) << 16),
        (0x8825, 4, 0),
    ] {
        tiff.extend_from_slice(&tag.to_be_bytes());
        tiff.extend_from_slice(&kind.to_be_bytes());
        tiff.extend_from_slice(&1u32.to_be_bytes());
        tiff.extend_from_slice(&value.to_be_bytes());
    }
    tiff.extend_from_slice(&[0; 4]);
    let body = [b"Exif\0\0".as_slice(), &tiff].concat();
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&(body.len() as u16 + 2).to_be_bytes());
    out.extend_from_slice(&body);
    out.extend_from_slice(&jpeg[2..]);
    out
}

/// An RGB profile with sRGB's primaries and white but a linear tone
/// curve (as a camera's linear or wide-gamut space is not sRGB): a
/// sample of 128 in it is 188 in sRGB.
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

fn png(img: &RgbaImage) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(
            img,
            img.width(),
            img.height(),
            image::ExtendedColorType::Rgba8,
        )
        .unwrap();
    out
}

/// A PNG of `w`×`h` zero samples of `depth` bits and `color` type: the
/// zlib stream repeats, so a large image is a small file (a bomb).
fn png_bomb(w: u32, h: u32, color: u8, depth: u8) -> Vec<u8> {
    let channels = match color {
        0 => 1,
        6 => 4,
        _ => 3,
    };
    let row = 1 + w as usize * channels * usize::from(depth) / 8;
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![0u8; row];
    for _ in 0..h {
        z.write_all(&zeros).unwrap();
    }
    let idat = z.finish().unwrap();
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = |kind: &[u8], data: &[u8]| {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut crc = flate2::Crc::new();
        crc.update(kind);
        crc.update(data);
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        out.extend_from_slice(&crc.sum().to_be_bytes());
    };
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[depth, color, 0, 0, 0]);
    chunk(b"IHDR", &ihdr);
    chunk(b"IDAT", &idat);
    chunk(b"IEND", &[]);
    out
}

fn gif(frames: usize) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut e = image::codecs::gif::GifEncoder::new(&mut out);
        for i in 0..frames {
            let img = RgbaImage::from_pixel(60, 40, Rgba([i as u8 * 100, 50, 50, 255]));
            e.encode_frame(image::Frame::new(img)).unwrap();
        }
    }
    out
}

/// Writes the sources into the example project's site.
fn sources(site: &Path) {
    let dir = site.join("t");
    std::fs::create_dir_all(&dir).unwrap();
    let w = |name: &str, bytes: &[u8]| std::fs::write(dir.join(name), bytes).unwrap();
    let landscape = jpeg(&photo(640, 480));
    w("landscape.jpg", &landscape);
    w("portrait.jpg", &jpeg(&photo(480, 640)));
    // Stored landscape, shown turned a quarter clockwise (EXIF 6).
    w("rotated.jpg", &with_exif(&landscape, 6));
    w(
        "alpha.png",
        &png(&RgbaImage::from_fn(200, 100, |x, _| {
            Rgba([200, 100, 50, (x * 255 / 200) as u8])
        })),
    );
    w(
        "linear.jpg",
        &jpeg_with_icc(
            &RgbImage::from_pixel(64, 64, Rgb([128, 128, 128])),
            Some(linear_rgb_profile()),
        ),
    );
    // The example photo under a second path.
    std::fs::copy(site.join("photos/springfield.jpg"), dir.join("copy.jpg")).unwrap();
    w("still.gif", &gif(1));
    w("animated.gif", &gif(2));
    w("page.html", b"<!doctype html><p>not an image</p>\n");
    w(
        "drawing.svg",
        b"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"10\" height=\"10\"/>\n",
    );
    // Hostile sources.
    let mut huge_png = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
    huge_png.extend_from_slice(&100_000u32.to_be_bytes());
    huge_png.extend_from_slice(&100_000u32.to_be_bytes());
    huge_png.extend_from_slice(&[
        8, 6, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, b'I', b'E', b'N', b'D', 0xAE, 0x42, 0x60, 0x82,
    ]);
    w("huge.png", &huge_png);
    // A real JPEG whose frame header claims 65,000 × 65,000.
    let mut huge_jpeg = landscape.clone();
    let sof = huge_jpeg
        .windows(2)
        .position(|m| m == [0xFF, 0xC0])
        .unwrap();
    huge_jpeg[sof + 5..sof + 9].copy_from_slice(&[0xFD, 0xE8, 0xFD, 0xE8]);
    w("huge.jpg", &huge_jpeg);
    let mut huge_webp = b"RIFF\x1e\0\0\0WEBPVP8X\x0a\0\0\0\0\0\0\0".to_vec();
    huge_webp.extend_from_slice(&[0xff; 6]);
    huge_webp.extend_from_slice(b"VP8L\0\0\0\0");
    w("huge.webp", &huge_webp);
    // 7,000 × 7,000 (49 MP, under the pixel limit): 16-bit RGBA takes
    // 392 MB to decode (over the memory limit); 8-bit grey is decoded.
    w("bomb16.png", &png_bomb(7000, 7000, 6, 16));
    w("bomb.png", &png_bomb(7000, 7000, 0, 8));
    let webp_bytes = {
        let mut out = Vec::new();
        image::codecs::webp::WebPEncoder::new_lossless(&mut out)
            .write_image(&photo(300, 200), 300, 200, image::ExtendedColorType::Rgb8)
            .unwrap();
        out
    };
    let png_bytes = png(&RgbaImage::from_pixel(300, 200, Rgba([1, 2, 3, 255])));
    let gif_bytes = gif(1);
    for (ext, bytes) in [
        ("jpg", &landscape),
        ("png", &png_bytes),
        ("webp", &webp_bytes),
        ("gif", &gif_bytes),
    ] {
        w(&format!("cut.{ext}"), &bytes[..bytes.len() * 2 / 3]);
        let mut bad = bytes.clone();
        let mid = bad.len() / 2;
        for b in &mut bad[mid..mid + 16] {
            *b ^= 0x5A;
        }
        w(&format!("corrupt.{ext}"), &bad);
    }
}

fn health_images(c: &Cluster, node: &str) -> serde_json::Value {
    c.health(node)["http"]["images"].clone()
}

/// What these tests check is results, limits and statuses, not speed: on a
/// machine shared with builds, a large decode or an AVIF encode by the
/// test build may take longer than the default deadline (10 s), whose 503
/// is not what they are about. Sets a long one and waits until `node`
/// has it.
fn patient(c: &Cluster, node: &str) {
    setting(c, node, "images.timeout_ms", "300000");
}

/// Sets a whole-number setting and waits until `node` has it.
fn setting(c: &Cluster, node: &str, key: &str, value: &str) {
    c.ok(&["config", "set", key, value]);
    let field = format!("\"{}\":{value}", key.replace('.', "_"));
    wait_until(
        Duration::from_secs(30),
        "the setting reaches the node",
        || {
            c.exec(node, &["makiatto", "show", "config", "--json"])
                .contains(&field)
        },
    );
}

#[test]
fn every_node_resizes_images_with_http_semantics() {
    require_root();
    let c = Cluster::new("im");
    let project = c.dir.path().join("project");
    let file = copy_examples(&project);
    sources(&project.join("site"));
    // A second domain serving the same files.
    let mut toml = std::fs::read_to_string(&file).unwrap();
    toml.push_str("\n[[domain]]\nname = \"photos.test\"\npath = \"./site\"\n");
    std::fs::write(&file, toml).unwrap();
    let state = c.up(2, &["--no-ca", "--sync", file.to_str().unwrap()]);
    let nodes: Vec<(String, String)> = state
        .hosts
        .iter()
        .map(|h| (h.node.clone(), h.ipv4.clone()))
        .collect();
    let photo_bytes = std::fs::read(project.join("site/photos/springfield.jpg")).unwrap();
    for (_, ip) in &nodes {
        wait_until(Duration::from_secs(60), "the site is served", || {
            get(&c, ip, "/photos/springfield.jpg", &[]).2 == photo_bytes
        });
    }
    let s = &nodes[0].1;
    for (node, _) in &nodes {
        patient(&c, node);
    }

    // The guide's URL, on every node: the same bytes, a WebP 800 wide,
    // with no EXIF (the source has a GPS position).
    let url = "/photos/springfield.jpg?w=800&fmt=webp&q=85";
    let (status, head, webp) = get(&c, s, url, &[]);
    assert_eq!(status, 200, "{head}");
    assert_eq!(header(&head, "content-type"), Some("image/webp"));
    assert_eq!(header(&head, "vary"), None, "only fmt=auto varies");
    let d = decode("webp", &webp);
    assert_eq!((d.w, d.h), (800, 533));
    assert!(!webp.windows(4).any(|w| w == b"EXIF" || w == b"Exif"));
    assert!(
        photo_bytes.windows(4).any(|w| w == b"Exif"),
        "the source has EXIF"
    );
    let etag = header(&head, "etag").unwrap().to_owned();
    assert!(
        etag.starts_with("\"i") && etag.len() == 35,
        "strong: {etag}"
    );
    // Cache-Control as for a static image.
    let (_, static_head, _) = get(&c, s, "/photos/springfield.jpg", &["-o", "/dev/null"]);
    assert_eq!(
        header(&head, "cache-control"),
        header(&static_head, "cache-control"),
        "{head}"
    );
    assert!(header(&head, "cache-control").is_some(), "{head}");
    for (_, ip) in &nodes[1..] {
        let (status, head2, other) = get(&c, ip, url, &[]);
        assert_eq!(status, 200);
        assert_eq!(other, webp, "identical bytes on every node");
        assert_eq!(header(&head2, "etag"), Some(etag.as_str()));
    }
    // Revalidation, HEAD, Range on the encoded bytes.
    let inm = format!("If-None-Match: {etag}");
    let (status, head, body) = get(&c, s, url, &["-H", &inm]);
    assert_eq!((status, body.len()), (304, 0), "{head}");
    assert_eq!(header(&head, "etag"), Some(etag.as_str()));
    let (status, head, _) = get(&c, s, url, &["-I", "-o", "/dev/null"]);
    assert_eq!(status, 200, "{head}");
    assert_eq!(
        header(&head, "content-length"),
        Some(webp.len().to_string().as_str())
    );
    let (status, head, body) = get(&c, s, url, &["-H", "Range: bytes=10-19"]);
    assert_eq!((status, body.as_slice()), (206, &webp[10..20]), "{head}");
    assert_eq!(
        header(&head, "content-range"),
        Some(format!("bytes 10-19/{}", webp.len()).as_str())
    );
    // Other query keys are ignored: the plain file.
    let (status, head, body) = get(&c, s, "/photos/springfield.jpg?v=3&utm_source=x", &[]);
    assert_eq!((status, body == photo_bytes), (200, true), "{head}");
    // Bad values of ours: 400 with a one-line reason, whatever the file.
    for q in [
        "w=-1", "w=abc", "q=0", "q=101", "fit=zoom", "fmt=gif", "w=5000", "w=1&w=2", "dpr=4",
    ] {
        for path in ["/photos/springfield.jpg", "/index.html"] {
            let (status, _, body) = get(&c, s, &format!("{path}?{q}"), &[]);
            assert_eq!(status, 400, "{path}?{q}");
            assert_eq!(body.iter().filter(|b| **b == b'\n').count(), 1, "{q}");
        }
    }
    // fmt=auto: AVIF, then WebP, then the source's format, with Vary.
    for (accept, ctype, tool) in [
        ("image/avif,image/webp,*/*", "image/avif", "avif"),
        ("image/webp,*/*", "image/webp", "webp"),
        ("image/png,*/*", "image/jpeg", "jpg"),
    ] {
        let a = format!("Accept: {accept}");
        let (status, head, body) =
            get(&c, s, "/photos/springfield.jpg?w=300&fmt=auto", &["-H", &a]);
        assert_eq!(status, 200, "{accept}: {head}");
        assert_eq!(header(&head, "content-type"), Some(ctype));
        assert_eq!(header(&head, "vary"), Some("accept"));
        let d = decode(tool, &body);
        assert_eq!((d.w, d.h), (300, 200), "{accept}");
    }
    // dpr multiplies the box.
    let (_, _, body) = get(&c, s, "/photos/springfield.jpg?w=200&dpr=1.5&fmt=png", &[]);
    assert_eq!(decode("png", &body).w, 300);
    // Nothing but pixels in any format: no EXIF, GPS position, camera
    // name, XMP or ICC profile (the source has EXIF with GPS and a Make).
    assert!(
        photo_bytes
            .windows(23)
            .any(|w| w == b"Makiatto example camera")
    );
    for fmt in ["jpg", "png", "webp", "avif"] {
        let path = format!("/photos/springfield.jpg?w=240&fmt={fmt}");
        let (status, head, body) = get(&c, s, &path, &[]);
        assert_eq!(status, 200, "{path}: {head}");
        assert_eq!(decode(fmt, &body).w, 240, "{path}");
        for marker in [
            b"Exif".as_slice(),
            b"eXIf",
            b"Makiatto",
            b"http://ns.adobe.com/xap",
            b"ICC_PROFILE",
            b"iCCP",
        ] {
            assert!(
                !body.windows(marker.len()).any(|w| w == marker),
                "{path}: {}",
                String::from_utf8_lossy(marker)
            );
        }
    }

    // One side keeps the aspect ratio, for every fit; max never enlarges.
    for (q, want) in [
        ("h=120", (160, 120)),
        ("w=2000", (640, 480)),
        ("w=2000&h=2000", (640, 480)),
        ("w=320&fit=pad", (320, 240)),
        ("h=96&fit=crop", (128, 96)),
        ("w=100&fit=stretch", (100, 75)),
    ] {
        let path = format!("/t/landscape.jpg?{q}&fmt=png");
        let (status, head, body) = get(&c, s, &path, &[]);
        assert_eq!(status, 200, "{path}: {head}");
        let d = decode("png", &body);
        assert_eq!((d.w, d.h), want, "{path}");
    }

    // A source in another colour space comes out in sRGB: grey 128 in
    // linear light is 188 in sRGB.
    for fmt in ["png", "jpg", "webp"] {
        let path = format!("/t/linear.jpg?w=32&fmt={fmt}&q=95");
        let (status, head, body) = get(&c, s, &path, &[]);
        assert_eq!(status, 200, "{path}: {head}");
        let d = decode(fmt, &body);
        let p = d.at(16, 16);
        assert!(
            p[..3].iter().all(|c| (184..=192).contains(c)),
            "{path}: {p:?}"
        );
    }

    // One cache entry per (source, rendition): the same bytes under
    // another path or another domain are a hit, not a new rendition.
    let before = health_images(&c, &nodes[0].0);
    let (status, _, copy) = get(&c, s, "/t/copy.jpg?w=800&fmt=webp&q=85", &[]);
    assert_eq!((status, copy == webp), (200, true));
    let (status, _, other) = get_from(&c, s, "photos.test", url, &[]);
    assert_eq!((status, other == webp), (200, true));
    let after = health_images(&c, &nodes[0].0);
    let delta = |k: &str| after[k].as_u64().unwrap() - before[k].as_u64().unwrap();
    assert_eq!((delta("made"), delta("cache_hits")), (0, 2), "{after}");

    // Every fit, landscape, portrait and EXIF-rotated, in every format.
    for (src, upright) in [
        ("landscape", (640, 480)),
        ("portrait", (480, 640)),
        ("rotated", (480, 640)),
    ] {
        for (fit, want) in [
            (
                "max",
                if upright.0 > upright.1 {
                    (200, 150)
                } else {
                    (150, 200)
                },
            ),
            ("pad", (200, 200)),
            ("crop", (200, 200)),
            ("stretch", (200, 200)),
        ] {
            for fmt in ["jpg", "png", "webp"] {
                let path = format!("/t/{src}.jpg?w=200&h=200&fit={fit}&fmt={fmt}");
                let (status, head, body) = get(&c, s, &path, &[]);
                assert_eq!(status, 200, "{path}: {head}");
                let d = decode(fmt, &body);
                assert_eq!((d.w, d.h), want, "{path}");
                if fit == "pad" {
                    // The band beside the picture: white in JPEG,
                    // transparent elsewhere.
                    let (x, y) = if upright.0 > upright.1 {
                        (100, 5)
                    } else {
                        (5, 100)
                    };
                    let p = d.at(x, y);
                    if fmt == "jpg" {
                        assert!(p.iter().all(|c| *c > 240), "{path}: {p:?}");
                    } else {
                        assert_eq!(p[3], 0, "{path}: {p:?}");
                    }
                    // The picture itself, centred, is opaque.
                    if fmt != "jpg" {
                        assert_eq!(d.at(100, 100)[3], 255, "{path}");
                    }
                }
                if fit == "stretch" && src != "portrait" {
                    // The red corner is stored top-left; EXIF 6 shows it
                    // top-right.
                    let (x, y) = if src == "rotated" {
                        (190, 10)
                    } else {
                        (10, 10)
                    };
                    let p = d.at(x, y);
                    assert!(
                        p[0] > 180 && p[1] < 80,
                        "{path}: red corner at {x},{y}: {p:?}"
                    );
                }
            }
        }
    }
    // A static GIF becomes a PNG; transparency kept in PNG and WebP.
    let (status, head, body) = get(&c, s, "/t/still.gif?w=30", &[]);
    assert_eq!(
        (status, header(&head, "content-type")),
        (200, Some("image/png"))
    );
    assert_eq!((decode("png", &body).w, decode("png", &body).h), (30, 20));
    let (_, _, body) = get(&c, s, "/t/alpha.png?w=100&fmt=webp", &[]);
    let d = decode("webp", &body);
    assert!(d.at(2, 10)[3] < 20 && d.at(97, 10)[3] > 230, "alpha kept");
    let (_, _, body) = get(&c, s, "/t/alpha.png?w=100&fmt=avif", &[]);
    assert_eq!(decode("avif", &body).w, 100);

    // Not still raster images: the file unchanged, never a 5xx.
    for name in ["animated.gif", "page.html", "drawing.svg"] {
        let source = std::fs::read(project.join("site/t").join(name)).unwrap();
        let (status, _, body) = get(&c, s, &format!("/t/{name}?w=10&fmt=png"), &[]);
        assert_eq!((status, body == source), (200, true), "{name}");
    }

    // Two identical requests at once make one rendition: the second either
    // joins the first (coalesced) or, if the first finished before it
    // arrived, is a cache hit. Which one is timing; the unit test
    // `concurrent_requests_for_one_rendition_make_it_once` proves the
    // joining itself, deterministically.
    let before = health_images(&c, &nodes[0].0);
    let url = format!("http://{s}/photos/springfield.jpg?w=1200&fmt=png");
    let out = c.ok(&[
        "local",
        "exec",
        "vector",
        "--",
        "curl",
        "-s",
        "-Z",
        "--parallel-immediate",
        "-H",
        "Host: example.test",
        "-o",
        "/dev/null",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}\n",
        &url,
        &url,
    ]);
    assert_eq!(out.lines().filter(|l| *l == "200").count(), 2, "{out}");
    let after = health_images(&c, &nodes[0].0);
    let delta = |k: &str| after[k].as_u64().unwrap() - before[k].as_u64().unwrap();
    assert_eq!(delta("made"), 1, "{after}");
    assert_eq!(delta("coalesced") + delta("cache_hits"), 1, "{after}");

    // A changed image, synced: every node serves the new rendition.
    std::fs::write(project.join("site/t/landscape.jpg"), jpeg(&photo(320, 100))).unwrap();
    c.ok(&["sync", "--file", file.to_str().unwrap()]);
    for (_, ip) in &nodes {
        wait_until(Duration::from_secs(60), "the new image is resized", || {
            let (status, _, body) = get(&c, ip, "/t/landscape.jpg?w=160&fmt=png", &[]);
            status == 200 && decode("png", &body).h == 50
        });
    }
    // The renditions of unchanged sources outlive the new version's
    // routes.
    let before = health_images(&c, &nodes[0].0);
    let (status, _, again) = get(&c, s, "/photos/springfield.jpg?w=800&fmt=webp&q=85", &[]);
    assert_eq!((status, again == webp), (200, true));
    let after = health_images(&c, &nodes[0].0);
    let delta = |k: &str| after[k].as_u64().unwrap() - before[k].as_u64().unwrap();
    assert_eq!((delta("made"), delta("cache_hits")), (0, 1), "{after}");

    // A small cache evicts, and stays within its size.
    c.ok(&["config", "set", "images.cache_mb", "1"]);
    wait_until(
        Duration::from_secs(30),
        "the setting reaches the node",
        || health_images(&c, &nodes[0].0)["cache_limit"].as_u64() == Some(1 << 20),
    );
    for w in (1000..1400).step_by(20) {
        let path = format!("/photos/springfield.jpg?w={w}&fmt=jpg&q=95");
        assert_eq!(get(&c, s, &path, &[]).0, 200, "{path}");
    }
    let h = health_images(&c, &nodes[0].0);
    assert!(h["evictions"].as_u64().unwrap() > 0, "{h}");
    assert!(h["cache_bytes"].as_u64().unwrap() <= 1 << 20, "{h}");
}

#[test]
fn hostile_sources_and_floods_get_the_right_status_and_serving_goes_on() {
    require_root();
    let c = Cluster::new("ih");
    let project = c.dir.path().join("project");
    let file = copy_examples(&project);
    sources(&project.join("site"));
    let state = c.up(1, &["--no-ca", "--sync", file.to_str().unwrap()]);
    let host = &state.hosts[0];
    let s = host.ipv4.as_str();
    let index = std::fs::read(project.join("site/index.html")).unwrap();
    wait_until(Duration::from_secs(60), "the site is served", || {
        get(&c, s, "/", &[]).2 == index
    });

    let set = |key: &str, value: &str| setting(&c, &host.node, key, value);
    // Time enough for the 49-megapixel decodes below in a debug build on
    // a machine shared with builds: the time bound is tested on its own.
    set("images.timeout_ms", "300000");

    // Over the limits, from the header: 422 with the reason.
    for (name, why) in [
        ("huge.png", "images.max_megapixels"),
        ("huge.jpg", "images.max_megapixels"),
        ("huge.webp", "images.max_megapixels"),
        ("bomb16.png", "images.max_decode_mb"),
    ] {
        let t = std::time::Instant::now();
        let (status, head, body) = get(&c, s, &format!("/t/{name}?w=100"), &[]);
        // Printed, not asserted: the time includes `maki local exec`.
        eprintln!("{name}: {status} in {:?}", t.elapsed());
        let body = String::from_utf8_lossy(&body);
        assert_eq!(status, 422, "{name}: {head}{body}");
        assert!(body.contains(why), "{name}: {body}");
    }
    // A bomb under the limits is decoded, within them.
    let (status, head, body) = get(&c, s, "/t/bomb.png?w=70", &[]);
    assert_eq!(status, 200, "{head}");
    assert_eq!((decode("png", &body).w, decode("png", &body).h), (70, 70));
    // Cut or corrupted sources of every format: never a 5xx, never a
    // broken image: the file as it is, or an image that decodes.
    for ext in ["jpg", "png", "webp", "gif"] {
        for kind in ["cut", "corrupt"] {
            let name = format!("{kind}.{ext}");
            let source = std::fs::read(project.join("site/t").join(&name)).unwrap();
            let (status, head, body) = get(&c, s, &format!("/t/{name}?w=50&fmt=png"), &[]);
            assert_eq!(status, 200, "{name}: {head}");
            if kind == "cut" || body != source {
                assert!(
                    body == source || header(&head, "content-type") == Some("image/png"),
                    "{name}"
                );
            }
            if body != source {
                decode("png", &body);
            }
            if kind == "cut" && ext != "gif" {
                assert!(body == source, "{name}: a cut file is served as it is");
            }
        }
    }

    // Too many new sizes of one source this minute: 429 with the time to
    // wait; its renditions already made, and other sources, are served.
    set("images.renditions_per_minute", "2");
    for w in [10, 11] {
        let (status, head, _) = get(&c, s, &format!("/t/portrait.jpg?w={w}"), &[]);
        assert_eq!(status, 200, "{head}");
    }
    let (status, head, body) = get(&c, s, "/t/portrait.jpg?w=12", &[]);
    assert_eq!(status, 429, "{head}");
    let after: u64 = header(&head, "retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&after), "Retry-After {after}");
    assert!(String::from_utf8_lossy(&body).contains("images.renditions_per_minute"));
    assert_eq!(get(&c, s, "/t/portrait.jpg?w=10", &[]).0, 200, "a hit");
    assert_eq!(get(&c, s, "/t/landscape.jpg?w=12", &[]).0, 200);
    assert_eq!(health_images(&c, &host.node)["rate_limited"], 1);

    // Over the time bound: 503 with Retry-After (a 49-megapixel decode
    // takes longer than 100 ms).
    set("images.timeout_ms", "100");
    let (status, head, body) = get(&c, s, "/t/bomb.png?w=71", &[]);
    assert_eq!(status, 503, "{head}");
    assert_eq!(header(&head, "retry-after"), Some("5"));
    assert!(String::from_utf8_lossy(&body).contains("images.timeout_ms"));
    assert_eq!(health_images(&c, &host.node)["timed_out"], 1);

    // A flood: 200 distinct renditions at once. The pool takes what its
    // queue holds, the rest get 503 with Retry-After at once; static files
    // and DNS are answered meanwhile; the node's memory stays bounded.
    // Time enough for every queued job on a machine shared with builds:
    // what is measured here is the queue limit, not the deadline.
    set("images.renditions_per_minute", "100000");
    set("images.timeout_ms", "300000");
    let mut urls = Vec::new();
    for w in 1000..1200 {
        urls.push("-o".to_string());
        urls.push("/dev/null".to_string());
        urls.push(format!("http://{s}/photos/springfield.jpg?w={w}&fmt=png"));
    }
    let mut flood = c.command(&[
        "local",
        "exec",
        "vector",
        "--",
        "curl",
        "-s",
        "-Z",
        "--parallel-immediate",
        "--parallel-max",
        "200",
        "--max-time",
        "300",
        "-H",
        "Host: example.test",
        "-w",
        "%{http_code} %header{retry-after}\n",
    ]);
    flood.args(&urls);
    let mut flood = flood.stdout(std::process::Stdio::piped()).spawn().unwrap();
    let at = format!("@{s}");
    // Static files and DNS while the flood runs: asked until it ends, and
    // at least once before it did.
    let mut during = 0;
    while flood.try_wait().unwrap().is_none() {
        let (status, _, body) = get(&c, s, "/index.html", &["--max-time", "10"]);
        assert_eq!(
            (status, body == index),
            (200, true),
            "a static file during the flood"
        );
        let dns = c.ok(&[
            "local",
            "exec",
            "vector",
            "--",
            "dig",
            "+short",
            "+time=5",
            "+tries=1",
            &at,
            "example.test",
            "A",
        ]);
        assert!(dns.contains(s), "DNS during the flood: {dns}");
        if flood.try_wait().unwrap().is_none() {
            during += 1;
        }
    }
    assert!(during > 0, "the flood ended before anything else was asked");
    let out = flood.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 200, "{out}");
    let ok = lines.iter().filter(|l| l.starts_with("200")).count();
    let busy: Vec<&&str> = lines.iter().filter(|l| l.starts_with("503")).collect();
    assert_eq!(ok + busy.len(), 200, "only 200 and 503: {out}");
    assert!(
        ok > 0 && !busy.is_empty(),
        "{ok} made, {} refused",
        busy.len()
    );
    assert!(
        busy.iter().all(|l| l.trim_end() == "503 1"),
        "Retry-After: {busy:?}"
    );
    let pid = daemon_pid(&host.netns).unwrap();
    let peak = proc_kib(pid, "status", "VmHWM");
    let rss = proc_kib(pid, "status", "VmRSS");
    eprintln!(
        "flood: {ok} made, {} refused; daemon RSS {rss} KiB, peak {peak} KiB",
        busy.len()
    );
    // Two pool threads, each within images.max_decode_mb (256 MiB),
    // plus the cache and the rest of the daemon.
    assert!(peak < 1024 * 1024, "peak RSS {peak} KiB");
    let h = health_images(&c, &host.node);
    assert_eq!(h["busy"].as_u64().unwrap(), busy.len() as u64, "{h}");
}
