//! Firmware signing on the real binaries and a real token: keys made in the
//! token, requests approved M-of-N by other firmware signers over mTLS,
//! anti-rollback, and the manifest checked by `station verify-firmware`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use softhsm_tests::{bin, ok, run, Running};

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

fn remote(a: &Running, cred: &str, args: &[&str]) -> Output {
    a.kmsctl_as(cred, args)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn records(a: &Running) -> usize {
    ok(a.kmsctl(&["audit", "show"])).lines().count()
}

fn last_record(a: &Running) -> String {
    ok(a.kmsctl(&["audit", "show"]))
        .lines()
        .last()
        .unwrap()
        .to_owned()
}

/// An image of `len` bytes.
fn image(dir: &Path, name: &str, len: usize, seed: u8) -> PathBuf {
    let path = dir.join(name);
    let bytes: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect();
    std::fs::write(&path, bytes).unwrap();
    path
}

fn verify(manifest: &Path, image: &Path, pubkey: &Path, min: &str) -> Output {
    run(Command::new(bin("station"))
        .arg("verify-firmware")
        .arg("--manifest")
        .arg(manifest)
        .arg("--image")
        .arg(image)
        .arg("--pubkey")
        .arg(pubkey)
        .args(["--min-security-version", min]))
}

/// Firmware signers: officer-01 (quickstart), signer-02 and signer-03.
fn with_signers() -> Running {
    let a = Running::start_with(|dir| {
        softhsm_tests::edit_file(
            &dir.join("kmsd.toml"),
            "ttl_seconds = 86400",
            "ttl_seconds = 3600",
        );
    });
    for id in ["signer-02", "signer-03"] {
        ok(a.kmsctl(&["officer", "add", id, "--roles", "firmware-signer"]));
    }
    a
}

#[test]
fn a_signing_request_needs_two_other_signers_and_the_manifest_verifies() {
    let a = with_signers();
    let tmp = a.tmp.path().to_owned();
    for (product, alg) in [("vbus-cpu", "ed25519"), ("vbus-pwr", "p256")] {
        let key = json(&ok(a.kmsctl(&[
            "--json",
            "firmware",
            "key",
            "create",
            "--product",
            product,
            "--algorithm",
            alg,
        ])));
        assert_eq!(key["product"], product);
        std::fs::write(
            tmp.join(format!("{product}.pub.pem")),
            key["public_key_pem"].as_str().unwrap(),
        )
        .unwrap();
    }
    // The keys are in the token, private and not extractable.
    let listing = ok(a.kmsctl(&["status"]));
    assert!(listing.contains("fw-vbus-cpu-"), "{listing}");

    for (product, alg_flag, sv) in [("vbus-cpu", None, "7"), ("vbus-pwr", Some("--sha512"), "3")] {
        let img = image(&tmp, &format!("{product}.bin"), 3 * 1024 * 1024 + 17, 5);
        let mut args = vec![
            "--json",
            "firmware",
            "sign",
            "--product",
            product,
            "--version",
            "1.4.2",
            "--security-version",
            sv,
        ];
        args.extend(alg_flag);
        args.push(img.to_str().unwrap());
        // officer-01 asks over mTLS; it cannot approve its own request.
        let req = json(&ok(remote(&a, "officer", &args)));
        let (id, hash) = (
            req["id"].as_str().unwrap().to_owned(),
            req["hash"].as_str().unwrap().to_owned(),
        );
        assert_eq!(req["state"], "pending");
        assert_eq!(req["approvals"]["need"], 2);
        assert_eq!(req["requested_by"], "officer-01");

        let approve = |who: &str, hash: &str, out: Option<&Path>| {
            let mut args = vec!["--json", "firmware", "approve", &id, "--hash", hash];
            if let Some(o) = out {
                args.extend(["--out", o.to_str().unwrap()]);
            }
            remote(&a, who, &args)
        };
        // Refusals: each its code, one audit record, nothing approved.
        let wrong_hash = "0".repeat(64);
        for (who, hash, code) in [
            ("officer", hash.as_str(), "self_approval"),
            (
                "officers/signer-02",
                wrong_hash.as_str(),
                "approval_hash_mismatch",
            ),
            (
                "stations/station-01",
                hash.as_str(),
                "approver_not_eligible",
            ),
        ] {
            let before = records(&a);
            let out = approve(who, hash, None);
            assert_eq!(out.status.code(), Some(1), "{who}");
            assert!(
                stderr(&out).starts_with(&format!("error[{code}]")),
                "{who}: {}",
                stderr(&out)
            );
            assert_eq!(records(&a) - before, 1, "{who}");
            assert!(last_record(&a).contains(&format!(r#""result":"{code}""#)));
        }
        let first = json(&ok(approve("officers/signer-02", &hash, None)));
        assert_eq!(first["approvals"]["have"], 1);
        assert_eq!(first["state"], "pending");
        let out = approve("officers/signer-02", &hash, None);
        assert!(
            stderr(&out).starts_with("error[duplicate_approval]"),
            "{}",
            stderr(&out)
        );
        // The local operator is no named signer.
        let out = a.kmsctl(&["firmware", "approve", &id, "--hash", &hash]);
        assert!(
            stderr(&out).starts_with("error[approver_not_eligible]"),
            "{}",
            stderr(&out)
        );

        let manifest = tmp.join(format!("{product}.manifest"));
        let done = json(&ok(approve("officers/signer-03", &hash, Some(&manifest))));
        assert_eq!(done["state"], "done", "{done}");
        assert_eq!(
            done["approvals"]["by"],
            serde_json::json!(["signer-02", "signer-03"])
        );
        let mj = &done["result"]["manifest_json"];
        assert_eq!(mj["product"], product);
        assert_eq!(mj["version"], "1.4.2");
        assert_eq!(mj["security_version"].to_string(), sv);
        // A closed request takes no more approvals.
        let out = approve("officers/signer-02", &hash, None);
        assert!(
            stderr(&out).starts_with("error[approval_closed]"),
            "{}",
            stderr(&out)
        );

        // The station's check: good, then every way it must fail.
        let pubkey = tmp.join(format!("{product}.pub.pem"));
        let good = verify(&manifest, &img, &pubkey, sv);
        assert_eq!(good.status.code(), Some(0), "{}", stderr(&good));
        assert!(String::from_utf8_lossy(&good.stdout).starts_with(&format!("OK {product} 1.4.2")));
        let json_form = PathBuf::from(format!("{}.json", manifest.display()));
        assert_eq!(verify(&json_form, &img, &pubkey, sv).status.code(), Some(0));
        let other_img = image(&tmp, "other.bin", 3 * 1024 * 1024 + 17, 6);
        let mut tampered = std::fs::read(&manifest).unwrap();
        tampered[9] ^= 1; // the security version
        let tampered_path = tmp.join("tampered.manifest");
        std::fs::write(&tampered_path, tampered).unwrap();
        let other_key = if product == "vbus-cpu" {
            "vbus-pwr"
        } else {
            "vbus-cpu"
        };
        let next_sv = (sv.parse::<u32>().unwrap() + 1).to_string();
        for (what, m, i, k, min, code) in [
            (
                "another image",
                manifest.clone(),
                other_img.clone(),
                pubkey.clone(),
                sv.to_owned(),
                "image_digest_mismatch",
            ),
            (
                "a changed manifest",
                tampered_path.clone(),
                img.clone(),
                pubkey.clone(),
                "0".to_owned(),
                "manifest_signature_invalid",
            ),
            (
                "another product's key (the other algorithm)",
                manifest.clone(),
                img.clone(),
                tmp.join(format!("{other_key}.pub.pem")),
                sv.to_owned(),
                "algorithm_mismatch",
            ),
            (
                "a higher minimum",
                manifest.clone(),
                img.clone(),
                pubkey.clone(),
                next_sv,
                "security_version_too_low",
            ),
        ] {
            let out = verify(&m, &i, &k, &min);
            assert_eq!(out.status.code(), Some(1), "{what}");
            assert!(
                stderr(&out).starts_with(&format!("error[{code}]")),
                "{what}: {}",
                stderr(&out)
            );
        }
    }
    let mut a = a;
    a.stop();
    ok(a.kmsctl(&["audit", "verify"]));
}

#[test]
fn rollbacks_conflicts_and_bad_requests_are_refused_and_change_nothing() {
    let mut a = with_signers();
    let tmp = a.tmp.path().to_owned();
    ok(a.kmsctl(&["firmware", "key", "create", "--product", "vbus-comm"]));
    // An officer without the firmware-signer role.
    ok(a.kmsctl(&["officer", "add", "plain-officer"]));
    let img = image(&tmp, "comm.bin", 4096, 1);
    let sign = |version: &str, sv: &str, img: &Path| {
        remote(
            &a,
            "officer",
            &[
                "--json",
                "firmware",
                "sign",
                "--product",
                "vbus-comm",
                "--version",
                version,
                "--security-version",
                sv,
                img.to_str().unwrap(),
            ],
        )
    };
    let approve_all = |req: &Value| {
        let (id, hash) = (req["id"].as_str().unwrap(), req["hash"].as_str().unwrap());
        for who in ["officers/signer-02", "officers/signer-03"] {
            ok(remote(
                &a,
                who,
                &["firmware", "approve", id, "--hash", hash],
            ));
        }
    };
    approve_all(&json(&ok(sign("2.0.0", "10", &img))));

    let other = image(&tmp, "comm-2.bin", 4096, 2);
    let digest = |n: usize| "ab".repeat(n);
    let body = |fields: &str| format!(r#"{{"product":"vbus-comm",{fields}}}"#);
    // (who, body, status, code)
    let rows: Vec<(&str, String, u16, &str)> = vec![
        (
            "officer",
            body(&format!(
                r#""version":"2.0.1","security_version":9,"sha256":"{}""#,
                digest(32)
            )),
            409,
            "security_version_rollback",
        ),
        (
            "officer",
            body(&format!(
                r#""version":"2.0.0","security_version":10,"sha256":"{}""#,
                digest(32)
            )),
            409,
            "firmware_version_conflict",
        ),
        (
            "officer",
            body(&format!(
                r#""version":"2.0.0","security_version":11,"sha256":"{}""#,
                digest(32)
            )),
            409,
            "firmware_version_conflict",
        ),
        (
            "officer",
            body(&format!(
                r#""version":"2.1.0","security_version":11,"sha256":"{}""#,
                digest(31)
            )),
            400,
            "digest_length_invalid",
        ),
        (
            "officer",
            body(&format!(
                r#""version":"2.1.0","security_version":11,"sha512":"{}""#,
                digest(32)
            )),
            400,
            "digest_length_invalid",
        ),
        (
            "officer",
            body(&format!(
                r#""version":"2.1.0","security_version":11,"sha256":"{0}","sha512":"{0}{0}""#,
                digest(32)
            )),
            400,
            "malformed_request",
        ),
        (
            "officer",
            body(r#""version":"2.1.0","security_version":11,"sha256":"zz""#),
            400,
            "malformed_request",
        ),
        (
            "officer",
            body(&format!(
                r#""version":"2.1 0","security_version":11,"sha256":"{}""#,
                digest(32)
            )),
            400,
            "invalid_version",
        ),
        (
            "officer",
            format!(
                r#"{{"product":"vbus comm","version":"2.1.0","security_version":11,"sha256":"{}"}}"#,
                digest(32)
            ),
            400,
            "invalid_product",
        ),
        (
            "officer",
            format!(
                r#"{{"product":"vbus-nope","version":"2.1.0","security_version":11,"sha256":"{}"}}"#,
                digest(32)
            ),
            404,
            "firmware_product_unknown",
        ),
        (
            "officer",
            body(r#""version":"2.1.0","security_version":-1,"sha256":"00""#),
            400,
            "malformed_request",
        ),
        (
            "stations/station-01",
            body(&format!(
                r#""version":"2.1.0","security_version":11,"sha256":"{}""#,
                digest(32)
            )),
            403,
            "role_not_permitted",
        ),
    ];
    let pending_before = json(&ok(a.kmsctl(&["--json", "firmware", "requests"])))
        .as_array()
        .unwrap()
        .len();
    for (who, body, status, code) in rows {
        let before = records(&a);
        let (got, answer) = a.curl(Some(who), "/v1/firmware/sign", &["--data-binary", &body]);
        assert_eq!(got, status, "{body}: {answer}");
        assert_eq!(json(&answer)["error"]["code"], code, "{body}: {answer}");
        assert_eq!(records(&a) - before, 1, "{body}");
        assert!(
            last_record(&a).contains(&format!(r#""result":"{code}""#)),
            "{body}"
        );
    }
    assert_eq!(
        json(&ok(a.kmsctl(&["--json", "firmware", "requests"])))
            .as_array()
            .unwrap()
            .len(),
        pending_before,
        "no request was opened"
    );

    // The same release again is signed again; a rollback that slipped in
    // while a request waited is refused when its quorum arrives.
    approve_all(&json(&ok(sign("2.0.0", "10", &img))));
    let late = json(&ok(sign("2.0.5", "10", &other)));
    approve_all(&json(&ok(sign("3.0.0", "12", &other))));
    let (id, hash) = (late["id"].as_str().unwrap(), late["hash"].as_str().unwrap());
    ok(remote(
        &a,
        "officers/signer-02",
        &["firmware", "approve", id, "--hash", hash],
    ));
    let failed = json(&ok(remote(
        &a,
        "officers/signer-03",
        &["--json", "firmware", "approve", id, "--hash", hash],
    )));
    assert_eq!(failed["state"], "failed", "{failed}");
    assert_eq!(
        failed["result"]["error"]["code"],
        "security_version_rollback"
    );

    // A revoked signer cannot even connect; an expired request takes no approval.
    ok(a.kmsctl(&["officer", "revoke", "signer-03"]));
    let out = remote(&a, "officers/signer-03", &["firmware", "requests"]);
    assert!(
        stderr(&out).starts_with("error[transport_error]"),
        "{}",
        stderr(&out)
    );

    // The anti-rollback state survives a restart (and is in the log).
    a.stop();
    a.restart();
    let out = remote(
        &a,
        "officer",
        &[
            "firmware",
            "sign",
            "--product",
            "vbus-comm",
            "--version",
            "3.0.1",
            "--security-version",
            "11",
            other.to_str().unwrap(),
        ],
    );
    assert!(
        stderr(&out).starts_with("error[security_version_rollback]"),
        "{}",
        stderr(&out)
    );
    a.stop();
    ok(a.kmsctl(&["audit", "verify"]));
}

#[test]
fn an_expired_request_takes_no_approval() {
    let a = Running::start_with(|dir| {
        softhsm_tests::edit_file(
            &dir.join("kmsd.toml"),
            "ttl_seconds = 86400",
            "ttl_seconds = 1",
        );
    });
    ok(a.kmsctl(&["officer", "add", "signer-02", "--roles", "firmware-signer"]));
    ok(a.kmsctl(&["firmware", "key", "create", "--product", "vbus-io"]));
    let img = image(a.tmp.path(), "io.bin", 100, 3);
    let sign = [
        "firmware",
        "sign",
        "--product",
        "vbus-io",
        "--version",
        "1",
        "--security-version",
        "1",
        img.to_str().unwrap(),
    ];
    // The local operator may not open a request (it could then approve it
    // as a named officer too); officers ask with their own credential.
    let out = a.kmsctl(&sign);
    assert!(
        stderr(&out).starts_with("error[named_requester_required]"),
        "{}",
        stderr(&out)
    );
    assert!(last_record(&a).contains(r#""result":"named_requester_required""#));
    let req = json(&ok(remote(
        &a,
        "officer",
        &[&["--json"][..], &sign[..]].concat(),
    )));
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let before = records(&a);
    let out = remote(
        &a,
        "officers/signer-02",
        &[
            "firmware",
            "approve",
            req["id"].as_str().unwrap(),
            "--hash",
            req["hash"].as_str().unwrap(),
        ],
    );
    assert!(
        stderr(&out).starts_with("error[approval_expired]"),
        "{}",
        stderr(&out)
    );
    assert_eq!(records(&a) - before, 1);
    let state = json(&ok(a.kmsctl(&[
        "--json",
        "firmware",
        "fetch",
        req["id"].as_str().unwrap(),
    ])));
    assert_eq!(state["state"], "pending");
    assert_eq!(state["approvals"]["have"], 0);
}

/// imgtool: `KMS_IMGTOOL`, else where `deploy/install-deps.sh --test` puts it.
fn imgtool() -> Option<PathBuf> {
    let path = std::env::var_os("KMS_IMGTOOL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/vbus-kms/imgtool/bin/imgtool")
        });
    path.exists().then_some(path)
}

#[test]
fn mcuboot_imgtool_takes_the_appliance_signature_of_its_digest() {
    let Some(imgtool) = imgtool() else {
        assert!(
            std::env::var_os("KMS_IMGTOOL_MISSING_OK").is_some(),
            "imgtool not found: run deploy/install-deps.sh --test, or set KMS_IMGTOOL"
        );
        eprintln!("SKIPPED: imgtool could not be installed (deploy/test.sh said so)");
        return;
    };
    let a = with_signers();
    let tmp = a.tmp.path().to_owned();
    let key = json(&ok(a.kmsctl(&[
        "--json",
        "firmware",
        "key",
        "create",
        "--product",
        "vbus-periph",
    ])));
    let pubkey = tmp.join("periph.pub.pem");
    std::fs::write(&pubkey, key["public_key_pem"].as_str().unwrap()).unwrap();
    let app = image(&tmp, "app.bin", 20_000, 9);
    let imgtool_sign = |extra: &[&str], out: &Path| {
        run(Command::new(&imgtool)
            .args([
                "sign",
                "--header-size",
                "0x200",
                "--pad-header",
                "--align",
                "8",
            ])
            .args([
                "--version",
                "1.2.3",
                "--security-counter",
                "7",
                "--slot-size",
                "0x20000",
            ])
            .arg("--fix-sig-pubkey")
            .arg(&pubkey)
            .args(extra)
            .arg(&app)
            .arg(out))
    };
    // 1. imgtool writes the digest to sign.
    let digest = tmp.join("digest.bin");
    let o = imgtool_sign(&["--vector-to-sign", "digest"], &digest);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::metadata(&digest).unwrap().len(), 32);
    // 2. The appliance signs it, after the quorum.
    let req = json(&ok(a.kmsctl_as(
        "officer",
        &[
            "--json",
            "firmware",
            "sign",
            "--product",
            "vbus-periph",
            "--version",
            "1.2.3",
            "--security-version",
            "7",
            "--mcuboot",
            digest.to_str().unwrap(),
        ],
    )));
    let (id, hash) = (req["id"].as_str().unwrap(), req["hash"].as_str().unwrap());
    assert_eq!(req["payload"]["mcuboot"], true);
    ok(remote(
        &a,
        "officers/signer-02",
        &["firmware", "approve", id, "--hash", hash],
    ));
    let out = tmp.join("app.manifest");
    let done = ok(remote(
        &a,
        "officers/signer-03",
        &[
            "--json",
            "firmware",
            "approve",
            id,
            "--hash",
            hash,
            "--out",
            out.to_str().unwrap(),
        ],
    ));
    assert!(
        json(&done)["result"]["mcuboot_signature"].is_string(),
        "{done}"
    );
    let sig = PathBuf::from(format!("{}.mcuboot.sig", out.display()));
    // 3. imgtool puts the signature in, and its verifier accepts it with
    //    the product's public key.
    let signed = tmp.join("app.signed.bin");
    let fix = ["--fix-sig".to_owned(), sig.display().to_string()];
    let o = imgtool_sign(&[fix[0].as_str(), fix[1].as_str()], &signed);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(Command::new(&imgtool)
        .arg("verify")
        .arg("-k")
        .arg(&pubkey)
        .arg(&signed));
    let said = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success() && said.contains("Image was correctly validated"),
        "{said}{}",
        stderr(&o)
    );
    // Another key does not validate it.
    let other = json(&ok(a.kmsctl(&[
        "--json",
        "firmware",
        "key",
        "create",
        "--product",
        "vbus-other",
    ])));
    let other_pub = tmp.join("other.pub.pem");
    std::fs::write(&other_pub, other["public_key_pem"].as_str().unwrap()).unwrap();
    let o = run(Command::new(&imgtool)
        .arg("verify")
        .arg("-k")
        .arg(&other_pub)
        .arg(&signed));
    assert!(
        !o.status.success(),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    // A P-256 product key cannot make MCUboot signatures here.
    ok(a.kmsctl(&[
        "firmware",
        "key",
        "create",
        "--product",
        "vbus-p256",
        "--algorithm",
        "p256",
    ]));
    let o = a.kmsctl_as(
        "officer",
        &[
            "firmware",
            "sign",
            "--product",
            "vbus-p256",
            "--version",
            "1",
            "--security-version",
            "1",
            "--mcuboot",
            digest.to_str().unwrap(),
        ],
    );
    assert!(
        stderr(&o).starts_with("error[malformed_request]"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn an_approval_stops_counting_when_its_approver_loses_the_role() {
    let a = with_signers();
    ok(a.kmsctl(&["officer", "add", "signer-04", "--roles", "firmware-signer"]));
    ok(a.kmsctl(&["firmware", "key", "create", "--product", "vbus-lab"]));
    let img = image(a.tmp.path(), "lab.bin", 1000, 4);
    let req = json(&ok(remote(
        &a,
        "officer",
        &[
            "--json",
            "firmware",
            "sign",
            "--product",
            "vbus-lab",
            "--version",
            "1",
            "--security-version",
            "1",
            img.to_str().unwrap(),
        ],
    )));
    let (id, hash) = (req["id"].as_str().unwrap(), req["hash"].as_str().unwrap());
    ok(remote(
        &a,
        "officers/signer-02",
        &["firmware", "approve", id, "--hash", hash],
    ));
    // signer-02 is no firmware signer any more.
    let policy = a.dir.join("policy.toml");
    let text = std::fs::read_to_string(&policy).unwrap();
    let edited = text
        .replace(
            r#""signer-02" = ["firmware-signer"]"#,
            r#""signer-02" = ["officer"]"#,
        )
        .replace(
            r#"signer-02 = ["firmware-signer"]"#,
            r#"signer-02 = ["officer"]"#,
        );
    assert_ne!(edited, text, "{text}");
    std::fs::write(&policy, edited).unwrap();
    ok(a.kmsctl(&["policy", "reload"]));
    // Its approval no longer counts: one more is needed.
    let second = json(&ok(remote(
        &a,
        "officers/signer-03",
        &["--json", "firmware", "approve", id, "--hash", hash],
    )));
    assert_eq!(second["state"], "pending", "{second}");
    let third = json(&ok(remote(
        &a,
        "officers/signer-04",
        &["--json", "firmware", "approve", id, "--hash", hash],
    )));
    assert_eq!(third["state"], "done", "{third}");
}
