//! Every validation of the policy file: each bad file is refused with the
//! line of the offending key or value and a reason naming the problem.
//! (Keeping the running policy when a reload fails is the caller's job.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

use policies::Policy;

/// Lines 1 to 5 of most rows: one officer who may also sign firmware, one
/// station, one auditor.
macro_rules! head {
    () => {
        "version = 1\n\
         [identities]\n\
         \"officer-01\" = [\"officer\", \"firmware-signer\"]\n\
         \"station-01\" = [\"station\"]\n\
         \"auditor-01\" = [\"auditor\"]\n"
    };
}

/// Lines 6 and 7: the station's rule.
macro_rules! station {
    () => {
        "[stations.\"station-01\"]\n\
         modules = [\"CPU\"]\n"
    };
}

#[test]
fn the_head_and_station_load() {
    Policy::parse(concat!(head!(), station!())).unwrap();
}

#[test]
fn bad_files_are_refused_with_line_and_reason() {
    #[rustfmt::skip]
    let rows: &[(&str, &str, usize, &str)] = &[
        // version
        ("version 2", "version = 2\n", 1, "version 2 is not supported"),
        ("version 0", "version = 0\n[identities]\n", 1, "version 0 is not supported"),
        ("no version", "[identities]\n\"officer-01\" = [\"officer\"]\n", 1, "missing field `version`"),
        ("version as a string", "version = \"1\"\n", 1, "invalid type"),
        // syntax and unknown fields
        ("syntax error", concat!(head!(), "[stations.\"station-01\"\nmodules = [\"CPU\"]\n"), 6, "invalid table header"),
        ("duplicate key", concat!(head!(), "\"station-01\" = [\"auditor\"]\n"), 6, "duplicate key"),
        ("unknown top-level field", "version = 1\nowner = \"me\"\n", 2, "unknown field `owner`"),
        ("unknown station field", concat!(head!(), station!(), "quota = 5\n"), 8, "unknown field `quota`"),
        ("unknown work order field", concat!(head!(), "[work_orders.\"WO-1\"]\nserials = [\"VBUS-CPU-2412-000000..000009\"]\nstation = \"station-01\"\n"), 8, "unknown field `station`"),
        ("unknown profile field", concat!(head!(), "[profiles.CPU]\nkey_usage = []\n"), 7, "unknown field `key_usage`"),
        ("unknown reissue field", concat!(head!(), "[reissue]\nrevoke_all = true\n"), 7, "unknown field `revoke_all`"),
        ("unknown approval kind", concat!(head!(), "[approvals.revocation]\nrequired = 1\n"), 6, "unknown field `revocation`"),
        ("unknown approval field", concat!(head!(), "[approvals.escrow_recovery]\nrequired = 1\nof = 3\n"), 8, "unknown field `of`"),
        // identities and roles
        ("unknown role", concat!(head!(), "\"boss-01\" = [\"boss\"]\n"), 6, "unknown variant `boss`"),
        ("role listed twice", concat!(head!(), "\"officer-02\" = [\"officer\", \"officer\"]\n"), 6, "role officer is listed twice"),
        ("identity id with a space", concat!(head!(), "\"bad id\" = [\"officer\"]\n"), 6, "identity id \"bad id\" must be 1 to 64 characters"),
        ("identity id with a slash", concat!(head!(), "\"a/b\" = [\"auditor\"]\n"), 6, "identity id"),
        ("empty identity id", concat!(head!(), "\"\" = [\"auditor\"]\n"), 6, "identity id"),
        ("identity id of 65 characters", concat!(head!(), "\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\" = [\"auditor\"]\n"), 6, "identity id"),
        // stations
        ("station without the station role", concat!(head!(), "[stations.\"officer-01\"]\nmodules = [\"CPU\"]\n"), 6, "does not hold the station role"),
        ("station that is no identity", concat!(head!(), "[stations.\"station-09\"]\nmodules = [\"CPU\"]\n"), 6, "no such identity"),
        ("empty modules", concat!(head!(), "[stations.\"station-01\"]\nmodules = []\n"), 7, "modules must not be empty"),
        ("unknown module", concat!(head!(), "[stations.\"station-01\"]\nmodules = [\"CPU\", \"GPU\"]\n"), 7, "unknown variant `GPU`"),
        ("module listed twice", concat!(head!(), "[stations.\"station-01\"]\nmodules = [\"CPU\", \"CPU\"]\n"), 7, "module CPU is listed twice"),
        ("no modules", concat!(head!(), "[stations.\"station-01\"]\nper_hour = 5\n"), 6, "missing field `modules`"),
        // serial ranges
        ("range without ..", concat!(head!(), station!(), "serials = [\"VBUS-CPU-2412-003000-003999\"]\n"), 8, "a serial range is VBUS-"),
        ("range with a full high serial", concat!(head!(), station!(), "serials = [\"VBUS-CPU-2412-003000..VBUS-CPU-2412-003999\"]\n"), 8, "a serial range is VBUS-"),
        ("range of an unknown module type", concat!(head!(), station!(), "serials = [\"VBUS-GPU-2412-003000..003999\"]\n"), 8, "a serial range is VBUS-"),
        ("range with lo > hi", concat!(head!(), station!(), "serials = [\"VBUS-CPU-2412-003999..003000\"]\n"), 8, "the low end 003999 is above the high end 003000"),
        ("range of another module type", concat!(head!(), station!(), "serials = [\"VBUS-CPU-2412-000000..000009\", \"VBUS-PWR-2412-000100..000199\"]\n"), 8, "is for PWR modules, which are not among the station's modules (CPU)"),
        // work orders
        ("work order range of another module type", concat!(head!(), station!(), "work_orders = [\"WO-1\"]\n[work_orders.\"WO-1\"]\nserials = [\"VBUS-PWR-2412-000100..000199\"]\n"), 8, "work order WO-1 has serial range VBUS-PWR-2412-000100..000199 for PWR modules"),
        ("missing work order", concat!(head!(), station!(), "work_orders = [\"WO-9\"]\n"), 8, "work order \"WO-9\" is not defined in [work_orders]"),
        ("work order without serials", concat!(head!(), "[work_orders.\"WO-1\"]\nserials = []\n"), 7, "serials must not be empty"),
        ("work order with a malformed range", concat!(head!(), "[work_orders.\"WO-1\"]\nserials = [\"VBUS-CPU-2412-1..2\"]\n"), 7, "a serial range is VBUS-"),
        ("work order with lo > hi", concat!(head!(), "[work_orders.\"WO-1\"]\nserials = [\"VBUS-CPU-2412-000009..000000\"]\n"), 7, "above the high end"),
        ("work order with a bad name", concat!(head!(), "[work_orders.\"WO 1\"]\nserials = [\"VBUS-CPU-2412-000000..000009\"]\n"), 6, "work order name"),
        // quotas
        ("per_hour of 0", concat!(head!(), station!(), "per_hour = 0\n"), 8, "per_hour is 0; it must be at least 1"),
        ("negative per_hour", concat!(head!(), station!(), "per_hour = -5\n"), 8, "per_hour is -5; it must be at least 1"),
        ("per_day of 0", concat!(head!(), station!(), "per_hour = 1\nper_day = 0\n"), 9, "per_day is 0; it must be at least 1"),
        ("per_day below per_hour", concat!(head!(), station!(), "per_hour = 500\nper_day = 100\n"), 9, "per_day (100) must be at least its per_hour (500)"),
        ("per_hour beyond u32", concat!(head!(), station!(), "per_hour = 5000000000\n"), 8, "must be at most 4294967295"),
        ("per_hour as a string", concat!(head!(), station!(), "per_hour = \"5\"\n"), 8, "invalid type"),
        // profiles
        ("profile of an unknown module type", concat!(head!(), "[profiles.GPU]\nvalidity_days = 10\n"), 6, "unknown field `GPU`"),
        ("empty key types", concat!(head!(), "[profiles.CPU]\nkey_types = []\n"), 7, "profiles.CPU.key_types must not be empty"),
        ("unknown key type", concat!(head!(), "[profiles.PWR]\nkey_types = [\"ecdsa-p256\", \"p-192\"]\n"), 7, "unknown variant `p-192`"),
        ("key type listed twice", concat!(head!(), "[profiles.PWR]\nkey_types = [\"ed25519\", \"ed25519\"]\n"), 7, "key type ed25519 is listed twice"),
        ("validity 0", concat!(head!(), "[profiles.CPU]\nvalidity_days = 0\n"), 7, "validity_days is 0; it must be 1 to 36500"),
        ("validity 36501", concat!(head!(), "[profiles.COMM]\nkey_types = [\"ed25519\"]\nvalidity_days = 36501\n"), 8, "validity_days is 36501; it must be 1 to 36500"),
        // approvals
        ("escrow quorum of 0", concat!(head!(), "[approvals.escrow_recovery]\nrequired = 0\n"), 7, "approvals.escrow_recovery.required is 0; it must be at least 1"),
        ("impossible escrow quorum", concat!(head!(), "[approvals.escrow_recovery]\nrequired = 2\n"), 7, "only 1 identity holds the officer role"),
        ("impossible firmware quorum", concat!(head!(), "[approvals.firmware_signing]\nrequired = 3\n"), 7, "only 1 identity holds the firmware-signer role"),
        ("firmware quorum of 0", concat!(head!(), "[approvals.firmware_signing]\nrequired = 0\n"), 7, "at least 1"),
        ("approval table without required", concat!(head!(), "[approvals.firmware_signing]\n"), 6, "missing field `required`"),
    ];
    assert!(rows.len() >= 12);
    for (name, text, line, reason) in rows {
        let err = match Policy::parse(text) {
            Ok(_) => panic!("{name}: loaded"),
            Err(e) => e,
        };
        assert_eq!(err.line, *line, "{name}: {err}");
        assert!(err.column >= 1, "{name}: {err}");
        assert!(err.reason.contains(reason), "{name}: {err}");
        assert!(!err.reason.contains('\n'), "{name}: {err}");
        assert_eq!(
            err.to_string(),
            format!("line {}, column {}: {}", err.line, err.column, err.reason)
        );
    }
}

#[test]
fn columns_point_at_the_offending_value() {
    #[rustfmt::skip]
    let rows: &[(&str, (usize, usize))] = &[
        ("version = 7\n", (1, 11)),
        (concat!(head!(), station!(), "per_hour = 0\n"), (8, 12)),
        (concat!(head!(), station!(), "serials = [\"VBUS-CPU-2412-000000..000009\", \"bad\"]\n"), (8, 44)),
        (concat!(head!(), "\"bad id\" = [\"auditor\"]\n"), (6, 1)),
    ];
    for (text, want) in rows {
        let err = Policy::parse(text).unwrap_err();
        assert_eq!((err.line, err.column), *want, "{err}");
    }
}

#[test]
fn the_earliest_problem_is_reported() {
    let text = concat!(
        head!(),
        station!(),
        "per_hour = 0\n",
        "[profiles.CPU]\n",
        "validity_days = 0\n"
    );
    let err = Policy::parse(text).unwrap_err();
    assert_eq!(err.line, 8, "{err}");
    let text = concat!(
        "version = 1\n",
        "[identities]\n",
        "\"bad id\" = [\"station\"]\n",
        "\"station-01\" = [\"station\"]\n",
        "[stations.\"station-01\"]\n",
        "modules = []\n",
    );
    let err = Policy::parse(text).unwrap_err();
    assert_eq!(err.line, 3, "{err}");
}

#[test]
fn a_minimal_policy_with_default_approvals_loads() {
    let p = Policy::parse(
        "version = 1\n[identities]\n\"station-01\" = [\"station\"]\n[stations.\"station-01\"]\nmodules = [\"CPU\"]\n",
    )
    .unwrap();
    assert_eq!(p.roles("station-01").len(), 1);
}

#[test]
fn profile_restrictions_must_fit_the_certificate_profiles() {
    use policies::{ProfileCap, ProfileCaps};
    let caps = ProfileCaps(
        [
            ("CPU", vec!["ecdsa-p256"], 7300),
            ("PERIPH", vec!["ecdsa-p256", "ed25519"], 7300),
        ]
        .into_iter()
        .map(|(m, k, d)| {
            (
                m.to_owned(),
                ProfileCap {
                    key_types: k.into_iter().map(str::to_owned).collect(),
                    validity_days: d,
                },
            )
        })
        .collect(),
    );
    let head = "version = 1\n";
    // (profiles section, expected line and reason fragment, or None when it loads)
    let rows: [(&str, Option<(usize, &str)>); 6] = [
        (
            "[profiles.CPU]\nkey_types = [\"ecdsa-p256\"]\nvalidity_days = 7300\n",
            None,
        ),
        ("[profiles.PERIPH]\nkey_types = [\"ed25519\"]\n", None),
        (
            "[profiles.CPU]\nkey_types = [\"ecdsa-p256\", \"ed25519\"]\n",
            Some((3, "does not accept key type ed25519")),
        ),
        (
            "[profiles.CPU]\nvalidity_days = 7301\n",
            Some((3, "longer than the certificate profile's 7300")),
        ),
        (
            "[profiles.COMM]\nvalidity_days = 30\n",
            Some((3, "no certificate profile for COMM")),
        ),
        (
            "[profiles.PWR]\nkey_types = [\"ecdsa-p256\"]\n",
            Some((3, "no certificate profile for PWR")),
        ),
    ];
    for (section, want) in rows {
        let text = format!("{head}{section}");
        match (policies::Policy::parse_within(&text, &caps), want) {
            (Ok(_), None) => {}
            (Err(e), Some((line, reason))) => {
                assert_eq!(e.line, line, "{section}: {e}");
                assert!(e.reason.contains(reason), "{section}: {e}");
            }
            (got, want) => panic!("{section}: got {got:?}, want {want:?}"),
        }
        // Without the profiles, every row loads.
        assert!(policies::Policy::parse(&text).is_ok(), "{section}");
    }
}
