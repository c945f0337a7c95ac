//! `makiatto blobs receive|missing`: the blob store as `maki sync` feeds it
//! over SSH, with the real binary.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failure is a panic

use std::process::Output;

use makiatto_harness::{daemon, with_input};

fn makiatto(data: &std::path::Path, args: &[&str], input: &[u8]) -> Output {
    with_input(daemon::on(data).args(args), input)
}

fn frame(hash: &[u8; 32], bytes: &[u8]) -> Vec<u8> {
    let mut out = hash.to_vec();
    out.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
    out.extend_from_slice(bytes);
    out
}

#[test]
fn blobs_stream_in_verified_and_missing_ones_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let page = b"<h1>hello</h1>".to_vec();
    let big = vec![42u8; 1 << 20];
    let (hp, hb) = (blake3::hash(&page), blake3::hash(&big));
    let mut stream = frame(hp.as_bytes(), &page);
    stream.extend(frame(hb.as_bytes(), &big));
    let out = makiatto(dir.path(), &["blobs", "receive"], &stream);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["stored"], 2);
    assert_eq!(report["bytes"], page.len() + big.len());

    let unknown = blake3::hash(b"not stored");
    let query = format!("{}\n{}\n{}\n", hp.to_hex(), unknown.to_hex(), hb.to_hex());
    let out = makiatto(dir.path(), &["blobs", "missing"], query.as_bytes());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        unknown.to_hex().as_str()
    );

    // A blob that lies about its hash is refused, and the exit code says so.
    let forged = frame(blake3::hash(b"other").as_bytes(), b"forged bytes");
    let out = makiatto(dir.path(), &["blobs", "receive"], &forged);
    assert!(!out.status.success());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["stored"], 0);
    assert!(report["refused"][0].as_str().unwrap().contains("hash to"));

    let out = makiatto(dir.path(), &["blobs", "missing"], b"zz\n");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a blake3 hash"));
}
