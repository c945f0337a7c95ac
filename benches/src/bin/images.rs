//! `images`: images on the fly against libvips, on this machine, reported
//! as ratios (issue 20).
//!
//! 1. **Pipeline**: a 4000×3000 JPEG (made by `/usr/bin/python3` with
//!    Pillow from a fixed seed: the example photo scaled up, with grain,
//!    quality 90) → 800 px wide WebP q80, and → 800 px JPEG q80. Ours:
//!    `makiatto image SRC 'w=800&fmt=webp&q=80' --repeat N` (the edge's
//!    pipeline, on one thread); the anchor: `vipsthumbnail --size 800x`
//!    with `VIPS_CONCURRENCY=1` over N copies of the file in one process,
//!    output `[Q=80,strip]`. CPU (user + system, from `getrusage` of the
//!    child) and wall time per image; three alternating rounds, best of
//!    each. Goal: ≤ 1.0 × vips' time.
//! 2. **Quality**: both outputs decoded and scored with SSIMULACRA2 (PyPI's
//!    `ssimulacra2` in `MAKIATTO_BENCH_PYTHON`, if installed) against a reference: the source resized
//!    to 800 wide by Pillow's Lanczos in floating point. Reported, with
//!    byte sizes.
//! 3. **Cache hits against a static file**: one node (`maki local up
//!    --nodes 1 --no-ca`) serving the same source as `/photo.jpg` and the
//!    bytes of its rendition as the static `/same.webp`; h2load over
//!    HTTP/1.1 on port 80 (`-t 2 -c 64 -D 10`) from a client namespace, on
//!    `/photo.jpg?w=800&fmt=webp&q=80` (a cache hit after the first) and
//!    on `/same.webp`; three alternating rounds, best. Goal: ≥ 0.9 × the
//!    static file's requests per second.
//!
//! 4. **Choices**: the libraries the pipeline was chosen among, each step
//!    timed alone on this thread with the same source (best of five):
//!    JPEG decoding by `image` (zune-jpeg) at full size against
//!    libjpeg-turbo at full size and at ¼ (shrink-on-load); resizing
//!    1000×750 → 800×600 by `fast_image_resize` against `image`'s
//!    `imageops::resize` (both Lanczos-3); encoding 800×600 by
//!    libjpeg-turbo against `image`'s JPEG encoder (q80), by libwebp lossy
//!    (q80) against `image`'s WebP encoder (lossless only), and AVIF by
//!    rav1e through `ravif` at speeds 6, 8 and 10 (q80). Time and bytes.
//!
//! `MAKIATTO_BENCH_PARTS=pipeline,quality,cache,choices`: only these parts.
//!
//! Needs root (part 3), libvips-tools, python3-pil, h2load. Build first:
//! `cargo build --release -p makiatto -p makiatto-cli -p makiatto-benches --bins`
//! then `target/release/images`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test and benchmark support: a failure is a panic that fails the run

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use makiatto_benches::measure::{print_json, print_table};
use makiatto_harness::netns::in_namespace;
use makiatto_harness::{Binaries, Lab, have, stdout, wait_until};
use serde_json::json;

const ROUNDS: usize = 3;
const N: usize = 20;

fn wanted(part: &str) -> bool {
    std::env::var("MAKIATTO_BENCH_PARTS").map_or(true, |p| p.split(',').any(|x| x == part))
}

/// CPU time of this process's finished children.
fn children_cpu() -> Duration {
    // SAFETY: getrusage writes the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut u) };
    let t = |v: libc::timeval| Duration::new(v.tv_sec as u64, v.tv_usec as u32 * 1000);
    t(u.ru_utime) + t(u.ru_stime)
}

/// Runs `cmd`; CPU and wall time of it.
fn run(cmd: &mut Command) -> (Duration, Duration) {
    let (cpu, wall) = (children_cpu(), Instant::now());
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (children_cpu() - cpu, wall.elapsed())
}

fn make_source(dir: &Path) -> PathBuf {
    let out = dir.join("source.jpg");
    let example =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/site/photos/springfield.jpg");
    let script = "import sys, random\n\
from PIL import Image\n\
random.seed(20)\n\
im = Image.open(sys.argv[1]).convert('RGB').resize((4000, 3000), Image.LANCZOS)\n\
noise = Image.effect_noise((4000, 3000), 48).convert('RGB')\n\
Image.blend(im, noise, 0.12).save(sys.argv[2], 'JPEG', quality=90)\n";
    let st = Command::new("/usr/bin/python3")
        .args(["-c", script])
        .arg(&example)
        .arg(&out)
        .status()
        .unwrap();
    assert!(st.success(), "making the source needs python3-pil");
    out
}

struct Case {
    key: &'static str,
    query: &'static str,
    vips_out: &'static str,
    ext: &'static str,
}

const CASES: [Case; 2] = [
    Case {
        key: "webp",
        query: "w=800&fmt=webp&q=80",
        vips_out: "%s_out.webp[Q=80,strip]",
        ext: "webp",
    },
    Case {
        key: "jpeg",
        query: "w=800&fmt=jpg&q=80",
        vips_out: "%s_out.jpg[Q=80,strip]",
        ext: "jpg",
    },
];

fn pipeline(makiatto: &Path, dir: &Path, source: &Path) -> serde_json::Value {
    let copies: Vec<PathBuf> = (0..N)
        .map(|i| {
            let p = dir.join(format!("copy{i}.jpg"));
            std::fs::copy(source, &p).unwrap();
            p
        })
        .collect();
    let mut rows = Vec::new();
    let mut report = serde_json::Map::new();
    for case in &CASES {
        let mut ours = (Duration::MAX, Duration::MAX);
        let mut vips = (Duration::MAX, Duration::MAX);
        for round in 0..ROUNDS {
            let mut one = |which: bool| {
                if which {
                    let t = run(Command::new(makiatto)
                        .arg("image")
                        .arg(source)
                        .arg(case.query)
                        .args(["--repeat", &N.to_string()]));
                    ours = (ours.0.min(t.0), ours.1.min(t.1));
                } else {
                    let t = run(Command::new("vipsthumbnail")
                        .env("VIPS_CONCURRENCY", "1")
                        .args(["--size", "800x", "-o", case.vips_out])
                        .args(&copies));
                    vips = (vips.0.min(t.0), vips.1.min(t.1));
                }
            };
            one(round % 2 == 0);
            one(round % 2 == 1);
        }
        let per = |d: Duration| d.as_secs_f64() * 1000.0 / N as f64;
        let (oc, ow, vc, vw) = (per(ours.0), per(ours.1), per(vips.0), per(vips.1));
        eprintln!(
            "{}: ours {oc:.1} ms CPU {ow:.1} ms wall; vips {vc:.1} ms CPU {vw:.1} ms wall",
            case.key
        );
        rows.push((
            case.key,
            format!(
                "ours {oc:.1} ms CPU / {ow:.1} ms wall per image; vipsthumbnail {vc:.1} / {vw:.1}; ratio (CPU) {:.2}, (wall) {:.2}",
                oc / vc,
                ow / vw
            ),
        ));
        report.insert(
            case.key.into(),
            json!({"ours_cpu_ms": oc, "ours_wall_ms": ow, "vips_cpu_ms": vc, "vips_wall_ms": vw, "ratio_cpu": oc / vc, "ratio_wall": ow / vw}),
        );
    }
    print_table("pipeline: 4000×3000 JPEG → 800 wide, one thread", &rows);
    serde_json::Value::Object(report)
}

fn quality(makiatto: &Path, dir: &Path, source: &Path) -> serde_json::Value {
    let python = std::env::var("MAKIATTO_BENCH_PYTHON").unwrap_or("/usr/bin/python3".into());
    let probe = Command::new(&python)
        .args(["-c", "import ssimulacra2"])
        .status();
    if !probe.is_ok_and(|s| s.success()) {
        eprintln!(
            "quality: skipped (no ssimulacra2 for {python}: make a venv with \
             --system-site-packages, pip install ssimulacra2, set MAKIATTO_BENCH_PYTHON)"
        );
        return json!(null);
    }
    let reference = dir.join("reference.png");
    let script = "import sys\nfrom PIL import Image\nim = Image.open(sys.argv[1]).convert('RGB')\nim.resize((800, 600), Image.LANCZOS).save(sys.argv[2])\n";
    run(Command::new("/usr/bin/python3")
        .args(["-c", script])
        .arg(source)
        .arg(&reference));
    let mut rows = Vec::new();
    let mut report = serde_json::Map::new();
    for case in &CASES {
        let ours = dir.join(format!("ours.{}", case.ext));
        let bytes = Command::new(makiatto)
            .arg("image")
            .arg(source)
            .arg(case.query)
            .output()
            .unwrap()
            .stdout;
        std::fs::write(&ours, &bytes).unwrap();
        let vips_dir = dir.join(format!("vips-{}", case.key));
        std::fs::create_dir_all(&vips_dir).unwrap();
        let src = vips_dir.join("v.jpg");
        std::fs::copy(source, &src).unwrap();
        run(Command::new("vipsthumbnail")
            .args(["--size", "800x", "-o", case.vips_out])
            .arg(&src));
        let theirs = vips_dir.join(format!("v_out.{}", case.ext));
        let score = |p: &Path| -> f64 {
            let s = "import sys\nfrom ssimulacra2 import compute_ssimulacra2\nprint(compute_ssimulacra2(sys.argv[1], sys.argv[2]))\n";
            let out = stdout(Command::new(&python).args(["-c", s]).arg(&reference).arg(p));
            out.trim().lines().last().unwrap().parse().unwrap()
        };
        let (so, sv) = (score(&ours), score(&theirs));
        let (bo, bv) = (bytes.len(), std::fs::metadata(&theirs).unwrap().len());
        rows.push((
            case.key,
            format!("ours {so:.2} ({bo} B); vips {sv:.2} ({bv} B)"),
        ));
        report.insert(
            case.key.into(),
            json!({"ours": so, "ours_bytes": bo, "vips": sv, "vips_bytes": bv}),
        );
    }
    print_table(
        "quality: SSIMULACRA2 against Pillow's Lanczos (higher is better)",
        &rows,
    );
    serde_json::Value::Object(report)
}

fn cache(makiatto: &Path, dir: &Path, source: &Path) -> serde_json::Value {
    assert!(have("h2load"), "h2load (nghttp2-client) is needed");
    let project = dir.join("project");
    let site = project.join("site");
    std::fs::create_dir_all(&site).unwrap();
    std::fs::copy(source, site.join("photo.jpg")).unwrap();
    let query = "w=800&fmt=webp&q=80";
    let rendition = Command::new(makiatto)
        .arg("image")
        .arg(source)
        .arg(query)
        .output()
        .unwrap()
        .stdout;
    std::fs::write(site.join("same.webp"), &rendition).unwrap();
    std::fs::write(
        project.join("makiatto.toml"),
        "[[domain]]\nname = \"bench.test\"\npath = \"./site\"\n",
    )
    .unwrap();
    let mut lab = Lab::new("bi");
    let hosts = lab.up(1, &project.join("makiatto.toml"), &["--no-ca"]);
    let node = hosts[0].ipv4.clone();
    // Named for this run, so a namespace left by a killed run is no
    // obstacle.
    let ns = format!("mkbi{}-client", std::process::id());
    lab.client_namespace(&ns, "bic");
    let url = |path: &str| format!("http://bench.test{path}");
    let curl = |path: &str| -> Vec<u8> {
        in_namespace(&ns, &[], &["curl", "-s", "--connect-to"])
            .arg(format!("bench.test:80:{node}:80"))
            .arg(url(path))
            .output()
            .unwrap()
            .stdout
    };
    wait_until(Duration::from_secs(60), "the site is served", || {
        curl("/same.webp") == rendition
    });
    let hit = format!("/photo.jpg?{query}");
    assert_eq!(
        curl(&hit),
        rendition,
        "the node makes the same bytes as `makiatto image`"
    );
    let h2load = |path: &str| -> f64 {
        let out = stdout(
            Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    ns.as_str(),
                    "timeout",
                    "120",
                    "h2load",
                    "--h1",
                ])
                .arg(format!("--connect-to={node}:80"))
                .args(["-t", "2", "-c", "64", "-D", "10", "--warm-up-time", "2"])
                .arg(url(path)),
        );
        let line = out
            .lines()
            .find(|l| l.trim_start().starts_with("finished in"))
            .unwrap();
        let rate: f64 = line
            .split(',')
            .nth(1)
            .unwrap()
            .trim()
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let codes = out
            .lines()
            .find(|l| l.trim_start().starts_with("status codes:"))
            .unwrap();
        assert!(codes.contains(" 0 3xx, 0 4xx, 0 5xx"), "{path}: {out}");
        rate
    };
    let (mut ours, mut stat) = (0f64, 0f64);
    for round in 0..ROUNDS {
        for which in [round % 2 == 0, round % 2 == 1] {
            if which {
                ours = ours.max(h2load(&hit));
            } else {
                stat = stat.max(h2load("/same.webp"));
            }
        }
    }
    let rows = [(
        "cache hit vs static",
        format!(
            "{ours:.0} req/s vs {stat:.0} req/s: ratio {:.2} ({} B each)",
            ours / stat,
            rendition.len()
        ),
    )];
    print_table(
        "cache hits against the same bytes as a static file (HTTP/1.1, 64 conns)",
        &rows,
    );
    json!({"hit_rps": ours, "static_rps": stat, "ratio": ours / stat, "bytes": rendition.len()})
}

/// The best of five timings of `f` on this thread, in milliseconds, and
/// what it made last.
fn best<T>(mut f: impl FnMut() -> T) -> (f64, T) {
    let mut best = f64::MAX;
    let mut last = None;
    for _ in 0..5 {
        let t = Instant::now();
        let out = f();
        best = best.min(t.elapsed().as_secs_f64() * 1000.0);
        last = Some(out);
    }
    (best, last.unwrap())
}

fn turbo_decode(bytes: &[u8], shrink: usize) -> image::RgbImage {
    let mut d = turbojpeg::Decompressor::new().unwrap();
    let factor = turbojpeg::ScalingFactor::new(1, shrink);
    let header = d.read_header(bytes).unwrap().scaled(factor);
    d.set_scaling_factor(factor).unwrap();
    let mut out = turbojpeg::Image {
        pixels: vec![0u8; header.width * header.height * 3],
        width: header.width,
        pitch: header.width * 3,
        height: header.height,
        format: turbojpeg::PixelFormat::RGB,
    };
    d.decompress(bytes, out.as_deref_mut()).unwrap();
    image::RgbImage::from_raw(header.width as u32, header.height as u32, out.pixels).unwrap()
}

fn choices(source: &Path) -> serde_json::Value {
    use fast_image_resize as fr;
    use image::ImageEncoder;
    let bytes = std::fs::read(source).unwrap();
    let mut rows = Vec::new();
    let mut report = serde_json::Map::new();
    let mut row = |key: &'static str, ms: f64, out_bytes: Option<usize>, what: &str| {
        let size = out_bytes.map_or(String::new(), |b| format!(", {b} B"));
        rows.push((key, format!("{ms:.1} ms{size} ({what})")));
        report.insert(key.into(), json!({"ms": ms, "bytes": out_bytes}));
    };
    // Decoding.
    let (ms, full) = best(|| {
        image::load_from_memory_with_format(&bytes, image::ImageFormat::Jpeg)
            .unwrap()
            .into_rgb8()
    });
    row(
        "decode image",
        ms,
        None,
        &format!("{}×{}", full.width(), full.height()),
    );
    let (ms, full) = best(|| turbo_decode(&bytes, 1));
    row(
        "decode turbo 1/1",
        ms,
        None,
        &format!("{}×{}", full.width(), full.height()),
    );
    let (ms, quarter) = best(|| turbo_decode(&bytes, 4));
    row(
        "decode turbo 1/4",
        ms,
        None,
        &format!("{}×{}", quarter.width(), quarter.height()),
    );
    // Resizing the quarter to 800 wide.
    let (w, h) = (800, 800 * quarter.height() / quarter.width());
    let (ms, small) = best(|| {
        let from = fr::images::Image::from_vec_u8(
            quarter.width(),
            quarter.height(),
            quarter.as_raw().clone(),
            fr::PixelType::U8x3,
        )
        .unwrap();
        let mut to = fr::images::Image::new(w, h, fr::PixelType::U8x3);
        let options = fr::ResizeOptions::new()
            .resize_alg(fr::ResizeAlg::Convolution(fr::FilterType::Lanczos3));
        fr::Resizer::new().resize(&from, &mut to, &options).unwrap();
        image::RgbImage::from_raw(w, h, to.into_vec()).unwrap()
    });
    row("resize fast_image_resize", ms, None, &format!("{w}×{h}"));
    let (ms, _) =
        best(|| image::imageops::resize(&quarter, w, h, image::imageops::FilterType::Lanczos3));
    row("resize image::imageops", ms, None, &format!("{w}×{h}"));
    // Encoding 800 wide.
    let (ms, out) = best(|| {
        let mut c = turbojpeg::Compressor::new().unwrap();
        c.set_quality(80).unwrap();
        c.set_subsamp(turbojpeg::Subsamp::Sub2x2).unwrap();
        c.compress_to_vec(turbojpeg::Image {
            pixels: &small.as_raw()[..],
            width: w as usize,
            pitch: w as usize * 3,
            height: h as usize,
            format: turbojpeg::PixelFormat::RGB,
        })
        .unwrap()
    });
    row("jpeg turbo q80", ms, Some(out.len()), "4:2:0");
    let (ms, out) = best(|| {
        let mut out = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 80)
            .write_image(&small, w, h, image::ExtendedColorType::Rgb8)
            .unwrap();
        out
    });
    row("jpeg image q80", ms, Some(out.len()), "image's encoder");
    let (ms, out) = best(|| {
        webp::Encoder::from_rgb(&small, w, h)
            .encode_simple(false, 80.0)
            .unwrap()
            .to_vec()
    });
    row("webp libwebp q80", ms, Some(out.len()), "lossy, method 4");
    let (ms, out) = best(|| {
        let mut out = Vec::new();
        image::codecs::webp::WebPEncoder::new_lossless(&mut out)
            .write_image(&small, w, h, image::ExtendedColorType::Rgb8)
            .unwrap();
        out
    });
    row("webp image lossless", ms, Some(out.len()), "its only mode");
    let px: Vec<ravif::RGB8> = small
        .as_raw()
        .chunks_exact(3)
        .map(|c| ravif::RGB8::new(c[0], c[1], c[2]))
        .collect();
    for (key, speed) in [
        ("avif ravif speed 6", 6),
        ("avif ravif speed 8", 8),
        ("avif ravif speed 10", 10),
    ] {
        let (ms, out) = best(|| {
            ravif::Encoder::new()
                .with_quality(80.0)
                .with_speed(speed)
                .with_num_threads(Some(1))
                .encode_rgb(ravif::Img::new(&px[..], w as usize, h as usize))
                .unwrap()
                .avif_file
        });
        row(key, ms, Some(out.len()), "q80, one thread");
    }
    print_table(
        "choices: each step alone, one thread, best of five (4000×3000 JPEG → 800 wide)",
        &rows,
    );
    serde_json::Value::Object(report)
}

fn main() {
    let bins = Binaries::of_this_build();
    let makiatto = bins.makiatto();
    assert!(
        have("vipsthumbnail"),
        "vipsthumbnail (libvips-tools) is needed"
    );
    let dir = tempfile::tempdir().unwrap();
    let source = make_source(dir.path());
    let mut report = serde_json::Map::new();
    if wanted("pipeline") {
        report.insert("pipeline".into(), pipeline(&makiatto, dir.path(), &source));
    }
    if wanted("quality") {
        report.insert("quality".into(), quality(&makiatto, dir.path(), &source));
    }
    if wanted("choices") {
        report.insert("choices".into(), choices(&source));
    }
    if wanted("cache") {
        report.insert("cache".into(), cache(&makiatto, dir.path(), &source));
    }
    print_json("images", serde_json::Value::Object(report));
}
