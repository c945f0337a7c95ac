//! Precompressed variants of a site's files (br, zstd, gzip), prepared on
//! the node when a version is deployed, so a request never compresses:
//! `<data>/variants/<hash>.<br|zst|gz>`. A variant that would save less
//! than a tenth is not kept; an empty `<hash>.<suffix>.skip` marker says so,
//! so the work is not redone.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use makiatto_events::{Blake3Hash, Manifest};

use super::request::Coding;

/// Files smaller than this are sent as they are (headers would eat the gain).
const MIN_SIZE: u64 = 256;
/// Variants made durable together (one `syncfs` per batch).
const PUBLISH_BATCH: usize = 512;
/// Files larger than this are not compressed ahead (they stream as they are).
const MAX_SIZE: u64 = 32 << 20;

/// Content types worth compressing.
pub fn compressible(content_type: &str) -> bool {
    let t = content_type.split(';').next().unwrap_or("").trim();
    t.starts_with("text/")
        || t.ends_with("+json")
        || t.ends_with("+xml")
        || matches!(
            t,
            "application/javascript"
                | "application/json"
                | "application/xml"
                | "application/wasm"
                | "image/svg+xml"
                | "image/x-icon"
                | "font/ttf"
                | "font/otf"
        )
}

/// Files that get variants: compressible types of a size worth it.
fn eligible(content_type: &str, size: u64) -> bool {
    compressible(content_type) && worth_its_size(size)
}

/// A size worth compressing ahead.
fn worth_its_size(size: u64) -> bool {
    (MIN_SIZE..=MAX_SIZE).contains(&size)
}

/// The variants directory.
#[derive(Debug, Clone)]
pub struct Variants {
    dir: PathBuf,
    /// What the directory holds for each source blob looked at so far, so
    /// that routes are rebuilt (on every deploy and every event) and new
    /// versions prepared without a `stat` per file and coding: a
    /// 10,000-file site is 30,000 of them, 60,000 with the skip markers.
    /// (foldhash: keyed by blob hashes, which are uniform already.)
    known: Arc<Mutex<foldhash::HashMap<Blake3Hash, Known>>>,
    /// Bumped whenever variants appear or go: a version's snapshot of
    /// what is prepared stays right while this does not change.
    generation: Arc<AtomicU64>,
}

/// The variants of one source blob present, with their sizes (shared by
/// every routes snapshot that names the blob).
pub type Present = Arc<[(Coding, u64)]>;

/// One source blob's variants.
#[derive(Debug, Clone)]
struct Known {
    /// Present, with their sizes.
    present: Present,
    /// Every coding either present or marked not worth it: nothing to do.
    settled: bool,
}

impl Variants {
    pub fn open(data_dir: &Path) -> std::io::Result<Variants> {
        let dir = data_dir.join("variants");
        std::fs::create_dir_all(&dir)?;
        Ok(Variants {
            dir,
            known: Arc::default(),
            generation: Arc::default(),
        })
    }

    /// Changes whenever variants appear or go (see [`Variants::present`]).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn path(&self, hash: &Blake3Hash, coding: Coding) -> PathBuf {
        self.dir
            .join(format!("{}.{}", hash.to_hex(), coding.suffix()))
    }

    fn skip_marker(&self, hash: &Blake3Hash, coding: Coding) -> PathBuf {
        self.dir
            .join(format!("{}.{}.skip", hash.to_hex(), coding.suffix()))
    }

    /// The variants present for each hash of `manifest`, with their sizes.
    pub fn present(&self, manifest: &Manifest) -> super::routes::Prepared {
        let mut out = super::routes::Prepared::default();
        let Ok(mut known) = self.known.lock() else {
            return out;
        };
        // A site has a handful of content types: each judged once.
        let mut compressible_types: foldhash::HashMap<&str, bool> = Default::default();
        for f in manifest.files.values() {
            let worth = *compressible_types
                .entry(f.content_type.as_str())
                .or_insert_with(|| compressible(&f.content_type));
            if !worth || !worth_its_size(f.size) {
                continue;
            }
            let k = known.entry(f.hash).or_insert_with(|| self.look(&f.hash));
            if !k.present.is_empty() {
                out.insert(f.hash, k.present.clone());
            }
        }
        out
    }

    /// What the directory holds for `hash`.
    fn look(&self, hash: &Blake3Hash) -> Known {
        let mut present = Vec::new();
        let mut settled = true;
        for c in Coding::ALL {
            match std::fs::metadata(self.path(hash, c)) {
                Ok(m) => present.push((c, m.len())),
                Err(_) => settled &= self.skip_marker(hash, c).exists(),
            }
        }
        Known {
            present: present.into(),
            settled,
        }
    }

    /// Whether `hash` is known to need nothing more.
    fn settled(&self, hash: &Blake3Hash) -> bool {
        let Ok(mut known) = self.known.lock() else {
            return false;
        };
        known
            .entry(*hash)
            .or_insert_with(|| self.look(hash))
            .settled
    }

    /// Makes the missing variants of every compressible file of
    /// `manifest`, reading sources with `source`. Returns how many were
    /// made. Blocking: run it off the async runtime.
    pub fn prepare(&self, manifest: &Manifest, source: impl Fn(&Blake3Hash) -> PathBuf) -> usize {
        let mut made = 0;
        let mut seen = std::collections::HashSet::new();
        // Written, not yet durable: (temporary, final) paths, published a
        // batch at a time (one `syncfs`, then the renames).
        let mut pending: Vec<(PathBuf, PathBuf)> = Vec::new();
        let mut touched = Vec::new();
        // One compression context for every probe (making one per file
        // showed in profiles of a 10,000-file version).
        let mut probe = zstd::bulk::Compressor::new(1).ok();
        for f in manifest.files.values() {
            if !eligible(&f.content_type, f.size) || !seen.insert(f.hash) || self.settled(&f.hash) {
                continue;
            }
            // Looked at again once done (below).
            touched.push(f.hash);
            let todo: Vec<Coding> = Coding::ALL
                .into_iter()
                .filter(|&c| {
                    !self.path(&f.hash, c).exists() && !self.skip_marker(&f.hash, c).exists()
                })
                .collect();
            if todo.is_empty() {
                continue;
            }
            let Ok(bytes) = std::fs::read(source(&f.hash)) else {
                continue;
            };
            // A fast probe first: what even zstd's quickest level cannot
            // shrink by a tenth (media, archives, random bytes) is not
            // worth the slow, strong encoders.
            let worth = |n: usize| (n as u64) * 10 <= (bytes.len() as u64) * 9;
            let probe = match &mut probe {
                Some(c) => c.compress(&bytes),
                None => zstd::bulk::compress(&bytes, 1),
            };
            if probe.is_ok_and(|probe| !worth(probe.len())) {
                for c in todo {
                    let _ = std::fs::File::create(self.skip_marker(&f.hash, c));
                }
                continue;
            }
            for c in todo {
                match compress(c, &bytes) {
                    Ok(out) if worth(out.len()) => {
                        let path = self.path(&f.hash, c);
                        if let Ok(tmp) = self.write_tmp(&path, &out) {
                            pending.push((tmp, path));
                        }
                    }
                    // A lost marker only means the work is done again.
                    Ok(_) => {
                        let _ = std::fs::File::create(self.skip_marker(&f.hash, c));
                    }
                    Err(e) => {
                        tracing::warn!(hash = %f.hash, coding = c.token(), error = %e, "cannot compress")
                    }
                }
            }
            if pending.len() >= PUBLISH_BATCH {
                made += self.publish(std::mem::take(&mut pending));
            }
        }
        made += self.publish(pending);
        if let Ok(mut known) = self.known.lock() {
            for hash in touched {
                known.insert(hash, self.look(&hash));
            }
        }
        if made > 0 {
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
        made
    }

    /// Writes `bytes` beside `path`, not yet durable nor in place.
    fn write_tmp(&self, path: &Path, bytes: &[u8]) -> std::io::Result<PathBuf> {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        Ok(tmp)
    }

    /// Makes written variants durable with one `syncfs`, then renames them
    /// into place: a crash leaves each one absent or whole, never torn.
    /// Returns how many were published.
    fn publish(&self, pending: Vec<(PathBuf, PathBuf)>) -> usize {
        if pending.is_empty() {
            return 0;
        }
        let synced = std::fs::File::open(&self.dir)
            .and_then(|dir| nix::unistd::syncfs(&dir).map_err(std::io::Error::from));
        if let Err(e) = synced {
            tracing::warn!(error = %e, "cannot make variants durable; they are made again later");
            for (tmp, _) in &pending {
                let _ = std::fs::remove_file(tmp);
            }
            return 0;
        }
        pending
            .into_iter()
            .filter(|(tmp, path)| std::fs::rename(tmp, path).is_ok())
            .count()
    }

    /// Deletes variants whose source is not in `keep`.
    pub fn collect(&self, keep: &std::collections::HashSet<Blake3Hash>) -> usize {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return 0;
        };
        let mut removed = 0;
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(hex) = name.to_str().and_then(|n| n.split('.').next()) else {
                continue;
            };
            let kept = hex.parse::<Blake3Hash>().is_ok_and(|h| keep.contains(&h));
            if !kept && std::fs::remove_file(e.path()).is_ok() {
                removed += 1;
            }
        }
        if let Ok(mut known) = self.known.lock() {
            known.retain(|h, _| keep.contains(h));
        }
        if removed > 0 {
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
        removed
    }
}

/// Compresses a response made on demand (a function's answer, a
/// transformed file): fast levels, since a request waits for it.
pub fn compress_dynamic(coding: Coding, bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(bytes.len() / 3);
    match coding {
        Coding::Br => {
            let params = brotli::enc::BrotliEncoderParams {
                quality: 4,
                lgwin: 20,
                ..Default::default()
            };
            brotli::BrotliCompress(&mut &bytes[..], &mut out, &params)?;
        }
        Coding::Zstd => out = zstd::bulk::compress(bytes, 3)?,
        Coding::Gzip => {
            let mut e = flate2::write::GzEncoder::new(out, flate2::Compression::new(6));
            e.write_all(bytes)?;
            out = e.finish()?;
        }
    }
    Ok(out)
}

fn compress(coding: Coding, bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(bytes.len() / 3);
    match coding {
        Coding::Br => {
            let params = brotli::enc::BrotliEncoderParams {
                quality: 11,
                lgwin: 22,
                ..Default::default()
            };
            brotli::BrotliCompress(&mut &bytes[..], &mut out, &params)?;
        }
        Coding::Zstd => out = zstd::bulk::compress(bytes, 19)?,
        Coding::Gzip => {
            let mut e = flate2::write::GzEncoder::new(out, flate2::Compression::best());
            e.write_all(bytes)?;
            out = e.finish()?;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use makiatto_events::manifest::FileEntry;
    use std::io::Read;

    #[test]
    fn compressible_files_get_variants_that_decode_to_the_source() {
        let dir = tempfile::tempdir().unwrap();
        let v = Variants::open(dir.path()).unwrap();
        let text = "hello makiatto ".repeat(200).into_bytes();
        let hash = Blake3Hash::of(&text);
        let src = dir.path().join("src");
        std::fs::write(&src, &text).unwrap();
        let mut noise = vec![0u8; 4096];
        blake3::Hasher::new().finalize_xof().fill(&mut noise);
        let noise_hash = Blake3Hash::of(&noise);
        std::fs::write(dir.path().join("noise"), &noise).unwrap();
        let mut m = Manifest::default();
        for (path, hash, size, ct) in [
            ("index.html", hash, text.len(), "text/html; charset=utf-8"),
            ("noise.txt", noise_hash, noise.len(), "text/plain"),
            ("logo.png", hash, text.len(), "image/png"),
        ] {
            m.files.insert(
                path.into(),
                FileEntry {
                    hash,
                    size: size as u64,
                    content_type: ct.into(),
                },
            );
        }
        let source = |h: &Blake3Hash| {
            if *h == noise_hash {
                dir.path().join("noise")
            } else {
                src.clone()
            }
        };
        assert_eq!(v.prepare(&m, source), 3);
        assert_eq!(
            v.prepare(&m, source),
            0,
            "nothing redone, incompressible skipped"
        );
        let present = v.present(&m);
        assert_eq!(present[&hash].len(), 3);
        assert!(!present.contains_key(&noise_hash));
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(std::fs::File::open(v.path(&hash, Coding::Gzip)).unwrap())
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, text);
        let z =
            zstd::decode_all(std::fs::File::open(v.path(&hash, Coding::Zstd)).unwrap()).unwrap();
        assert_eq!(z, text);
        let mut b = Vec::new();
        brotli::BrotliDecompress(
            &mut std::fs::File::open(v.path(&hash, Coding::Br)).unwrap(),
            &mut b,
        )
        .unwrap();
        assert_eq!(b, text);
        assert_eq!(
            v.collect(&std::collections::HashSet::from([hash])),
            3,
            "the noise markers go"
        );
        // A node started again finds what the directory holds.
        let again = Variants::open(dir.path()).unwrap();
        assert_eq!(again.present(&m)[&hash].len(), 3);
        assert_eq!(again.prepare(&m, source), 0, "the variants are there");
        // Collected, they are neither served nor taken as made.
        // (The noise's markers were made again by that prepare: six.)
        assert_eq!(again.collect(&std::collections::HashSet::new()), 6);
        assert!(again.present(&m).is_empty());
        assert_eq!(again.prepare(&m, source), 3);
        assert_eq!(again.present(&m)[&hash].len(), 3);
    }
}
