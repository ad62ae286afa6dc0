//! The unit every scenario reports: one figure, printed as one JSON line with `--json`.
//!
//! The line format is a contract with the scripts that collect results across runs and
//! machines; keys and their order never change:
//!
//! `{"scenario":"codec","dataset":"iot-trucks","system":"updraft","figure":"bytes_per_sample","value":1.02,"unit":"B"}`

use serde::Serialize;

/// One measured figure of one system on one dataset in one scenario.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Figure {
    /// `codec`, later `storage`, `ingest`, ...
    pub scenario: String,
    /// A reference dataset (`iot-trucks`, ...).
    pub dataset: String,
    /// What was measured: `updraft`, `updraft-edge`, or a peer such as `gorilla-baseline`.
    pub system: String,
    /// What the value is, in snake case: `bytes_per_sample`, `encode_msamples_per_s`, ...
    pub figure: String,
    /// Rounded to 3 decimals: more would be noise, and it keeps lines stable to compare.
    pub value: f64,
    /// `B`, `Msamples/s`, `ms`, ...
    pub unit: String,
}

impl Figure {
    pub fn new(
        scenario: &str,
        dataset: &str,
        system: &str,
        figure: &str,
        value: f64,
        unit: &str,
    ) -> Self {
        Self {
            scenario: scenario.to_owned(),
            dataset: dataset.to_owned(),
            system: system.to_owned(),
            figure: figure.to_owned(),
            value: (value * 1000.0).round() / 1000.0,
            unit: unit.to_owned(),
        }
    }

    /// The figure as one line of JSON, without a newline. A non-finite value becomes `null`.
    pub fn to_json_line(&self) -> String {
        // Serialising a struct of strings and a float cannot fail; the fallback keeps the
        // contract (one JSON object per line) even so.
        serde_json::to_string(self).unwrap_or_else(|e| {
            format!(
                r#"{{"scenario":{:?},"error":{:?}}}"#,
                self.scenario,
                e.to_string()
            )
        })
    }
}

/// A short column heading for a figure name; the name itself when it has none.
pub fn label(figure: &str) -> &str {
    match figure {
        "bytes_per_sample" => "bytes/sample",
        "encode_msamples_per_s" => "encode",
        "decode_msamples_per_s" => "decode",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_line_has_exactly_the_documented_shape() {
        let f = Figure::new(
            "codec",
            "iot-trucks",
            "updraft",
            "bytes_per_sample",
            1.0199999,
            "B",
        );
        assert_eq!(
            f.to_json_line(),
            r#"{"scenario":"codec","dataset":"iot-trucks","system":"updraft","figure":"bytes_per_sample","value":1.02,"unit":"B"}"#
        );
    }

    #[test]
    fn json_values_round_to_three_decimals_and_stay_numbers() {
        let f = Figure::new(
            "codec",
            "d",
            "s",
            "encode_msamples_per_s",
            123.45678,
            "Msamples/s",
        );
        assert!(f.to_json_line().contains(r#""value":123.457,"#));
        let whole = Figure::new("codec", "d", "s", "f", 3.0, "B");
        assert!(whole.to_json_line().contains(r#""value":3.0,"#));
        let nan = Figure::new("codec", "d", "s", "f", f64::NAN, "B");
        assert!(nan.to_json_line().contains(r#""value":null,"#));
        let parsed: serde_json::Value =
            serde_json::from_str(&f.to_json_line()).expect("valid JSON");
        assert_eq!(parsed["unit"], "Msamples/s");
        assert_eq!(parsed.as_object().map(|o| o.len()), Some(6));
    }
}
