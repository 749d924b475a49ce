//! Streaming digests equal in-memory ones; the core modules name no `std`
//! path (the `--no-default-features` build is checked by CI/by hand, since
//! feature unification in the workspace can hide a `std` use).

#![cfg(feature = "std")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests

use std::io::{self, Read};

use firmware::{digest_reader, DigestAlgorithm};

/// A reader that yields at most 1000 bytes a read and is interrupted once.
struct Choppy<'a> {
    data: &'a [u8],
    interrupted: bool,
}

impl Read for Choppy<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if !self.interrupted {
            self.interrupted = true;
            return Err(io::Error::from(io::ErrorKind::Interrupted));
        }
        let n = buf.len().min(1000).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

#[test]
fn streaming_digest_equals_in_memory_digest() {
    let image: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    for alg in [DigestAlgorithm::Sha256, DigestAlgorithm::Sha512] {
        let mut seen = Vec::new();
        let d = digest_reader(alg, &image[..], |n| seen.push(n)).unwrap();
        assert_eq!(d, alg.digest(&image));
        assert_eq!(
            seen,
            vec![65_536, 131_072, 196_608, 200_000],
            "64 KiB reads"
        );
        let d = digest_reader(
            alg,
            Choppy {
                data: &image,
                interrupted: false,
            },
            |_| {},
        )
        .unwrap();
        assert_eq!(d, alg.digest(&image));
        let empty = digest_reader(alg, io::empty(), |_| panic!("no progress for nothing")).unwrap();
        assert_eq!(empty, alg.digest(b""));
    }
}

#[test]
fn read_errors_are_returned() {
    struct Broken;
    impl Read for Broken {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::Error::other("disk on fire"))
        }
    }
    let e = digest_reader(DigestAlgorithm::Sha256, Broken, |_| {}).unwrap_err();
    assert_eq!(e.to_string(), "disk on fire");
}

/// Regression guard for the bootloader build: the core (layout, decoding,
/// verification) must use only `core` and `alloc`.
#[test]
fn core_modules_name_no_std_path() {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for file in ["lib.rs", "error.rs", "key.rs", "manifest.rs", "verify.rs"] {
        let text = std::fs::read_to_string(src.join(file)).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            assert!(
                !code.contains("std::") && !code.contains("extern crate std"),
                "src/{file}:{}: {line}",
                n + 1
            );
        }
    }
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    assert!(lib.contains("#![cfg_attr(not(feature = \"std\"), no_std)]"));
    assert!(lib.contains("#[cfg(feature = \"std\")]\nmod hosted;"));
}
