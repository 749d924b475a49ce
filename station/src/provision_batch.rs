//! `station provision-batch`: [`provision`](crate::provision::provision)
//! on several devices at once.
//!
//! The input has one device a line, `SERIAL DEVICE` separated by blanks,
//! `DEVICE` as for `station provision --device` (a `pkcs11:` URI,
//! `serial:TTY` or a `/dev/…` path); blank lines and lines starting with
//! `#` are ignored. A serial or a device given twice is refused, naming
//! both lines.
//!
//! Each device runs the whole flow in a thread of its own (at most `jobs`
//! at a time) over its own device link; the threads share one [`Client`].
//! One device failing does not stop the others; the result of each says
//! at which step it failed and why, and re-running the batch resumes every
//! device where it stopped, as `provision` does.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use serde::Serialize;

use crate::client::Client;
use crate::device::DeviceAddress;
use crate::error::{Error, Result};
use crate::fsutil::check_serial;
use crate::provision::{provision_tracked, ProvisionOptions, StepOutcome};
use crate::serial::SerialOptions;

/// Devices run at once unless told otherwise.
pub const DEFAULT_JOBS: u16 = 4;

/// Largest input accepted (bytes).
const MAX_INPUT: u64 = 1024 * 1024;

/// One line of the input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceLine {
    /// 1-based line number in the input.
    pub line: usize,
    /// The module serial.
    pub serial: String,
    /// The device, as written.
    pub device: DeviceAddress,
    /// The device as written (a `pkcs11:` URI without its query, which may
    /// hold a PIN), for display.
    pub shown: String,
}

/// The input `text` of `path` (`path` only names it in errors).
pub fn parse_devices(path: &Path, text: &str) -> Result<Vec<DeviceLine>> {
    let bad = |line: usize, reason: String| Error::BatchFile {
        path: path.to_owned(),
        reason: format!("line {line}: {reason}"),
    };
    let mut devices: Vec<DeviceLine> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let mut fields = trimmed.split_whitespace();
        let (Some(serial), Some(device), None) = (fields.next(), fields.next(), fields.next())
        else {
            return Err(bad(
                line,
                "expected two fields, `SERIAL DEVICE` (a pkcs11: URI, serial:TTY or a /dev/... \
                 path)"
                    .into(),
            ));
        };
        check_serial(serial).map_err(|e| bad(line, e.to_string()))?;
        let shown = crate::device::redacted(device);
        let address = DeviceAddress::parse(device).ok_or_else(|| {
            bad(
                line,
                format!(
                    "device {shown:?} is neither a pkcs11: URI nor serial:TTY nor a /dev/... path"
                ),
            )
        })?;
        if let Some(d) = devices.iter().find(|d| d.serial == serial) {
            return Err(bad(line, format!("{serial} is already on line {}", d.line)));
        }
        if let Some(d) = devices.iter().find(|d| d.device == address) {
            return Err(bad(
                line,
                format!("device {shown} is already on line {}", d.line),
            ));
        }
        devices.push(DeviceLine {
            line,
            serial: serial.to_owned(),
            device: address,
            shown,
        });
    }
    if devices.is_empty() {
        return Err(Error::BatchFile {
            path: path.to_owned(),
            reason: "no device in it".into(),
        });
    }
    Ok(devices)
}

/// Reads and parses the input file.
pub fn read_devices(path: &Path) -> Result<Vec<DeviceLine>> {
    use std::io::Read as _;
    let file = std::fs::File::open(path).map_err(|e| Error::io("reading", path, e))?;
    let mut text = String::new();
    file.take(MAX_INPUT + 1)
        .read_to_string(&mut text)
        .map_err(|e| Error::io("reading", path, e))?;
    if text.len() as u64 > MAX_INPUT {
        return Err(Error::BatchFile {
            path: path.to_owned(),
            reason: format!("larger than {MAX_INPUT} bytes"),
        });
    }
    parse_devices(path, &text)
}

/// What to do with every device.
#[derive(Clone, Debug)]
pub struct BatchProvisionOptions {
    /// Devices provisioned at once (at least 1).
    pub jobs: usize,
    /// Inject each device's PSK.
    pub psk: bool,
    /// Timeouts of serial lines.
    pub serial: SerialOptions,
}

/// How one device ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Something was done, and the device is now provisioned.
    Provisioned,
    /// Everything was already there; nothing changed.
    AlreadyProvisioned,
    /// It stopped at a step.
    Failed,
}

impl Outcome {
    /// For the summary table.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Provisioned => "provisioned",
            Outcome::AlreadyProvisioned => "already provisioned",
            Outcome::Failed => "failed",
        }
    }
}

/// The result of one device.
#[derive(Clone, Debug, Serialize)]
pub struct DeviceResult {
    /// Its input line.
    pub line: usize,
    /// The module serial.
    pub serial: String,
    /// The device (a `pkcs11:` URI without its query).
    pub device: String,
    /// How it ended.
    pub outcome: Outcome,
    /// The step it failed at: `open` (the device could not be opened) or
    /// one of [`STEPS`](crate::provision::STEPS).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<&'static str>,
    /// The error code, when it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// The error message, when it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The hardware UUID, when it did not fail.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hw_uuid: Option<String>,
    /// The certificate's serial number, when it did not fail.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate_serial: Option<String>,
    /// Each step that ended.
    pub steps: Vec<StepOutcome>,
}

/// What the batch reports while it runs (from the devices' threads).
#[derive(Debug)]
pub enum Event<'a> {
    /// A device's thread started on it.
    Started {
        /// Its index in the input.
        index: usize,
        /// The device.
        device: &'a DeviceLine,
    },
    /// A step ended.
    Step {
        /// Its index in the input.
        index: usize,
        /// The device.
        device: &'a DeviceLine,
        /// The step.
        step: &'a StepOutcome,
    },
    /// The device is done.
    Finished {
        /// Its index in the input.
        index: usize,
        /// Its result.
        result: &'a DeviceResult,
    },
}

/// Provisions every device, `opts.jobs` at a time; the results in input
/// order. `events` hears progress from the worker threads.
pub fn provision_batch(
    client: &Client,
    devices: &[DeviceLine],
    opts: &BatchProvisionOptions,
    events: &(dyn Fn(Event<'_>) + Sync),
) -> Vec<DeviceResult> {
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<DeviceResult>>> = Mutex::new(vec![None; devices.len()]);
    let jobs = opts.jobs.clamp(1, devices.len().max(1));
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                let Some(device) = devices.get(index) else {
                    break;
                };
                events(Event::Started { index, device });
                let result = one(client, device, opts, &mut |step| {
                    events(Event::Step {
                        index,
                        device,
                        step,
                    })
                });
                events(Event::Finished {
                    index,
                    result: &result,
                });
                let mut all = results.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(slot) = all.get_mut(index) {
                    *slot = Some(result);
                }
            });
        }
    });
    results
        .into_inner()
        .unwrap_or_else(|p| p.into_inner())
        .into_iter()
        .flatten()
        .collect()
}

fn one(
    client: &Client,
    device: &DeviceLine,
    opts: &BatchProvisionOptions,
    progress: &mut dyn FnMut(&StepOutcome),
) -> DeviceResult {
    let mut result = DeviceResult {
        line: device.line,
        serial: device.serial.clone(),
        device: device.shown.clone(),
        outcome: Outcome::Failed,
        step: None,
        code: None,
        message: None,
        hw_uuid: None,
        certificate_serial: None,
        steps: Vec::new(),
    };
    let mut steps = Vec::new();
    let mut at = "open";
    let outcome = device.device.open(&opts.serial).and_then(|mut link| {
        let popts = ProvisionOptions {
            serial: device.serial.clone(),
            psk: opts.psk,
            record: None,
        };
        provision_tracked(
            link.as_mut(),
            client,
            &popts,
            &mut |s| {
                steps.push(s.clone());
                progress(s);
            },
            &mut at,
        )
    });
    result.steps = steps;
    match outcome {
        Ok(report) => {
            result.outcome = if report.unchanged {
                Outcome::AlreadyProvisioned
            } else {
                Outcome::Provisioned
            };
            result.hw_uuid = Some(report.hw_uuid);
            result.certificate_serial = Some(report.certificate_serial);
        }
        Err(e) => {
            result.step = Some(at);
            result.code = Some(e.code().to_owned());
            result.message = Some(e.to_string());
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<DeviceLine>> {
        parse_devices(Path::new("devices.txt"), text)
    }

    fn err(text: &str) -> String {
        match parse(text) {
            Ok(d) => panic!("accepted: {d:?}"),
            Err(e) => {
                assert_eq!(e.code(), "batch_file_invalid", "{e}");
                e.to_string()
            }
        }
    }

    #[test]
    fn parses_devices_comments_and_blank_lines() {
        let d = parse(
            "# station 3, lot 12\n\
             \n\
             VBUS-CPU-2412-000001 serial:/dev/pts/3\n\
             \tVBUS-CPU-2412-000002   /dev/ttyUSB1  \n\
             VBUS-PWR-2412-000003 pkcs11:token=dev-3?module-path=/m.so&pin-value=1234\n\
             # done\n",
        )
        .unwrap();
        assert_eq!(d.len(), 3);
        assert_eq!(
            (d[0].line, d[0].serial.as_str()),
            (3, "VBUS-CPU-2412-000001")
        );
        assert_eq!(d[0].device, DeviceAddress::Serial("/dev/pts/3".into()));
        assert_eq!(d[1].line, 4);
        assert_eq!(d[1].device, DeviceAddress::Serial("/dev/ttyUSB1".into()));
        assert_eq!(
            d[2].device,
            DeviceAddress::Pkcs11("pkcs11:token=dev-3?module-path=/m.so&pin-value=1234".into())
        );
        // the PIN is shown nowhere
        assert_eq!(d[2].shown, "pkcs11:token=dev-3");
        assert!(!format!("{:?}", d[2]).contains("1234"));
    }

    #[test]
    fn bad_lines_are_named() {
        let e = err("VBUS-CPU-2412-000001 serial:/dev/pts/3\nVBUS-CPU-2412-000002\n");
        assert!(
            e.contains("devices.txt: line 2: expected two fields"),
            "{e}"
        );
        let e = err("VBUS-CPU-2412-000001 /dev/pts/3 extra\n");
        assert!(e.contains("line 1: expected two fields"), "{e}");
        let e = err("\n\nVBUS-CPU-2412-000001 COM3\n");
        assert!(e.contains("line 3: device \"COM3\" is neither"), "{e}");
        let e = err("VBUS-CPU-2412-000001 serial:\n");
        assert!(e.contains("line 1: device"), "{e}");
        let e = err("../etc serial:/dev/pts/1\n");
        assert!(e.contains("line 1: module serial \"../etc\""), "{e}");
        let e = err(
            "VBUS-CPU-2412-000001 serial:/dev/pts/1\n#\nVBUS-CPU-2412-000001 serial:/dev/pts/2\n",
        );
        assert!(
            e.contains("line 3: VBUS-CPU-2412-000001 is already on line 1"),
            "{e}"
        );
        let e = err("VBUS-CPU-2412-000001 serial:/dev/pts/1\nVBUS-CPU-2412-000002 /dev/pts/1\n");
        assert!(
            e.contains("line 2: device /dev/pts/1 is already on line 1"),
            "{e}"
        );
        let e = err("# nothing\n\n");
        assert!(e.contains("no device"), "{e}");
        // a PIN in a bad line is not echoed
        let e = err("VBUS-CPU-2412-000001 pkcs11:token=x?pin-value=secret99 more\n");
        assert!(!e.contains("secret99"), "{e}");
    }
}
