//! Reading the user PIN from a file or an environment variable.
//!
//! The PIN is held as a [`SecretString`] (zeroized on drop, `[REDACTED]` in
//! `Debug`) and never appears in an error message or a log line.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;

use secrecy::SecretString;
use zeroize::Zeroizing;

use crate::config::TokenConfig;
use crate::error::{Error, Result};

/// Largest PIN file we read; PINs are short, anything bigger is a mistake.
const MAX_PIN_LEN: u64 = 256;

/// Read the user PIN from the source the configuration names.
pub fn load_pin(cfg: &TokenConfig) -> Result<SecretString> {
    let raw: Zeroizing<String> = match (&cfg.pin_file, &cfg.pin_env) {
        (Some(path), _) => {
            let file = std::fs::File::open(path).map_err(|e| Error::PinSource {
                reason: format!("cannot open PIN file {}: {e}", path.display()),
            })?;
            let mode = file
                .metadata()
                .map_err(|e| Error::PinSource {
                    reason: format!("cannot stat PIN file {}: {e}", path.display()),
                })?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                return Err(Error::PinSource {
                    reason: format!(
                        "PIN file {} is accessible by group or others (mode {:o}); run chmod 600 {}",
                        path.display(),
                        mode & 0o777,
                        path.display()
                    ),
                });
            }
            let mut s = Zeroizing::new(String::new());
            file.take(MAX_PIN_LEN + 1)
                .read_to_string(&mut s)
                .map_err(|e| Error::PinSource {
                    reason: format!("cannot read PIN file {}: {e}", path.display()),
                })?;
            if s.len() as u64 > MAX_PIN_LEN {
                return Err(Error::PinSource {
                    reason: format!(
                        "PIN file {} is longer than {MAX_PIN_LEN} bytes",
                        path.display()
                    ),
                });
            }
            s
        }
        (None, Some(var)) => Zeroizing::new(std::env::var(var).map_err(|_| Error::PinSource {
            reason: format!("environment variable {var} (token.pin_env) is not set or not UTF-8"),
        })?),
        (None, None) => {
            return Err(Error::PinSource {
                reason: "neither token.pin_file nor token.pin_env is set".into(),
            })
        }
    };
    let pin = raw.trim_end_matches(['\r', '\n']);
    if pin.is_empty() {
        return Err(Error::PinSource {
            reason: "the PIN is empty".into(),
        });
    }
    Ok(SecretString::from(pin.to_owned()))
}
