//! The provisioning record a station attaches to a device
//! (`POST /v1/devices/{serial}/record`).

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// What the station did to a module: firmware, test steps, component lots.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvisioningRecord {
    /// Firmware version flashed.
    pub firmware_version: String,
    /// Who ran the station.
    pub operator: String,
    /// Test and provisioning steps, in order.
    pub steps: Vec<Step>,
    /// Which lot each component came from (may be absent: none).
    #[serde(default)]
    pub component_lots: Vec<ComponentLot>,
}

/// One test or provisioning step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// Step name.
    pub name: String,
    /// Whether it passed.
    pub passed: bool,
    /// A measured value, if the step measures one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// The unit of `value`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
}

/// The lot a component came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComponentLot {
    /// Component name or part number.
    pub component: String,
    /// Lot number.
    pub lot: String,
}

impl ProvisioningRecord {
    /// Parses and [validates](Self::validate) a record from JSON text.
    pub fn from_json(text: &str) -> Result<ProvisioningRecord> {
        let record: ProvisioningRecord =
            serde_json::from_str(text).map_err(|e| Error::InvalidRecord(e.to_string()))?;
        record.validate()?;
        Ok(record)
    }

    /// Checks what the JSON shape alone does not: names present and free
    /// of control characters. The appliance checks again (and its limits
    /// on lengths and counts are its own).
    pub fn validate(&self) -> Result<()> {
        let text = |what: String, v: &str, required: bool| {
            if required && v.trim().is_empty() {
                Err(Error::InvalidRecord(format!("{what} is empty")))
            } else if v.contains(char::is_control) {
                Err(Error::InvalidRecord(format!(
                    "{what} contains control characters"
                )))
            } else {
                Ok(())
            }
        };
        text("firmware_version".into(), &self.firmware_version, true)?;
        text("operator".into(), &self.operator, true)?;
        for (i, step) in self.steps.iter().enumerate() {
            text(format!("steps[{i}].name"), &step.name, true)?;
            text(
                format!("steps[{i}].unit"),
                step.unit.as_deref().unwrap_or(""),
                false,
            )?;
            if step.value.is_some_and(|v| !v.is_finite()) {
                return Err(Error::InvalidRecord(format!(
                    "steps[{i}].value is not finite"
                )));
            }
        }
        for (i, lot) in self.component_lots.iter().enumerate() {
            text(
                format!("component_lots[{i}].component"),
                &lot.component,
                true,
            )?;
            text(format!("component_lots[{i}].lot"), &lot.lot, true)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_record_round_trips() {
        let text = r#"{"firmware_version":"1.4.2","operator":"alice",
            "steps":[{"name":"flash","passed":true},
                     {"name":"vcc","passed":true,"value":3.31,"unit":"V"}],
            "component_lots":[{"component":"MCU","lot":"L2412-7"}]}"#;
        let r = ProvisioningRecord::from_json(text).unwrap();
        assert_eq!(r.steps[1].value, Some(3.31));
        let again: ProvisioningRecord =
            serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(again, r);
        // Absent optionals stay absent on the wire.
        assert!(!serde_json::to_string(&r.steps[0])
            .unwrap()
            .contains("value"));
    }

    #[test]
    fn component_lots_may_be_absent() {
        let r =
            ProvisioningRecord::from_json(r#"{"firmware_version":"1","operator":"a","steps":[]}"#)
                .unwrap();
        assert!(r.component_lots.is_empty());
    }

    #[test]
    fn bad_records_are_refused_locally() {
        let cases = [
            (
                "unknown top-level field",
                r#"{"firmware_version":"1","operator":"a","steps":[],"component_lots":[],"x":1}"#,
                "unknown field",
            ),
            (
                "unknown step field",
                r#"{"firmware_version":"1","operator":"a","steps":[{"name":"s","passed":true,"ok":1}],"component_lots":[]}"#,
                "unknown field",
            ),
            (
                "missing steps",
                r#"{"firmware_version":"1","operator":"a","component_lots":[]}"#,
                "missing field `steps`",
            ),
            (
                "value not a number",
                r#"{"firmware_version":"1","operator":"a","steps":[{"name":"s","passed":true,"value":"3"}],"component_lots":[]}"#,
                "invalid type",
            ),
            (
                "empty operator",
                r#"{"firmware_version":"1","operator":" ","steps":[],"component_lots":[]}"#,
                "operator is empty",
            ),
            (
                "empty lot",
                r#"{"firmware_version":"1","operator":"a","steps":[],"component_lots":[{"component":"c","lot":""}]}"#,
                "component_lots[0].lot is empty",
            ),
            (
                "control character in a name",
                r#"{"firmware_version":"1","operator":"a","steps":[{"name":"s\u0007","passed":true}],"component_lots":[]}"#,
                "steps[0].name contains control characters",
            ),
            ("not JSON", "firmware=1", "line 1 column"),
        ];
        for (name, text, want) in cases {
            let e = ProvisioningRecord::from_json(text).unwrap_err();
            assert_eq!(e.code(), "record_invalid", "{name}");
            assert!(e.to_string().contains(want), "{name}: {e}");
        }
    }
}
