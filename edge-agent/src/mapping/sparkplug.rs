//! The Sparkplug B decoder: topic namespace, protobuf payload, and the alias state learned
//! from BIRTH messages.
//!
//! # Topic
//!
//! `spBv1.0/<group>/<type>/<edge node>[/<device>]`, where `<type>` is `NBIRTH`, `NDATA`,
//! `NDEATH` or `NCMD` (4 levels) or `DBIRTH`, `DDATA`, `DDEATH` or `DCMD` (5 levels). Values
//! are labelled `group`, `edge_node` and, for device messages, `device`. Commands (`NCMD`,
//! `DCMD`) and host state messages (`spBv1.0/STATE/...`) carry no measurements: they are
//! taken and produce nothing.
//!
//! # Payload
//!
//! The Eclipse Tahu `sparkplug_b.proto` `Payload` message (proto2). Only the fields needed
//! here are declared below with their numbers from that file; prost skips every other field
//! (metadata, properties, string/bytes/dataset/template values, extensions), so any valid
//! payload decodes. A payload that is not valid protobuf is refused as a whole
//! (`invalid_sparkplug`).
//!
//! A metric is named by `name` or, in DATA messages, by the `alias` a BIRTH tied to a name.
//! Its `datatype` may be omitted in DATA messages; the one from the BIRTH is used then, and
//! failing that the type is taken from which value field is set. Int8..Int64, UInt8..UInt64,
//! Float, Double and Boolean become `f64` (signed types from the low bits of the value, so
//! both sign-extended and plain encodings read right); every other type (String, Text,
//! DateTime, UUID, Bytes, File, DataSet, Template), `is_null` metrics and metrics without a
//! value are skipped (`not_numeric`). An alias no BIRTH has taught is skipped
//! (`unknown_alias`); the agent does not ask the node to rebirth. The metric's timestamp is
//! used, else the payload's, else the receive time.
//!
//! # State
//!
//! Per edge node (`group`, `edge node`): the name/alias/datatype table from its NBIRTH, one
//! such table per device from its DBIRTH, and the last `seq`. NBIRTH replaces the node's
//! table and forgets its devices' tables (they must rebirth after it, as the specification
//! requires); DBIRTH replaces the device's table; NDEATH forgets the node and its devices,
//! DDEATH the device. `seq` (0-255, shared by every message of a node but NDEATH) is only
//! checked: a message whose `seq` is not the previous one plus 1 counts one gap. The state is
//! bounded: at most [`MAX_NODES`] edge nodes and [`MAX_ENTRIES`] learned names and aliases in
//! total; beyond that, BIRTH values are still mapped but their aliases are not learned
//! (`alias_limit`).

use super::rules::Rule;
use super::{Decoded, Rejection, SkipReason, Tally};
use prost::Message;
use std::collections::HashMap;

/// The first topic level of every Sparkplug B topic.
pub(crate) const NAMESPACE: &str = "spBv1.0";
/// Most edge nodes whose state is kept.
pub(crate) const MAX_NODES: usize = 10_000;
/// Most learned names and aliases over all nodes and devices.
pub(crate) const MAX_ENTRIES: usize = 1_000_000;

/// `Payload` from `sparkplug_b.proto`, only the fields used here.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct Payload {
    #[prost(uint64, optional, tag = "1")]
    pub timestamp: Option<u64>,
    #[prost(message, repeated, tag = "2")]
    pub metrics: Vec<Metric>,
    #[prost(uint64, optional, tag = "3")]
    pub seq: Option<u64>,
}

/// `Payload.Metric`, only the fields used here. The value fields belong to a `oneof` in the
/// `.proto`; declaring them as separate optional fields decodes the same bytes.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct Metric {
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    #[prost(uint64, optional, tag = "2")]
    pub alias: Option<u64>,
    #[prost(uint64, optional, tag = "3")]
    pub timestamp: Option<u64>,
    #[prost(uint32, optional, tag = "4")]
    pub datatype: Option<u32>,
    #[prost(bool, optional, tag = "7")]
    pub is_null: Option<bool>,
    #[prost(uint32, optional, tag = "10")]
    pub int_value: Option<u32>,
    #[prost(uint64, optional, tag = "11")]
    pub long_value: Option<u64>,
    #[prost(float, optional, tag = "12")]
    pub float_value: Option<f32>,
    #[prost(double, optional, tag = "13")]
    pub double_value: Option<f64>,
    #[prost(bool, optional, tag = "14")]
    pub boolean_value: Option<bool>,
}

/// Sparkplug B data type numbers (`DataType` in the `.proto`) that carry numbers.
mod datatype {
    pub const UNKNOWN: u32 = 0;
    pub const INT8: u32 = 1;
    pub const INT16: u32 = 2;
    pub const INT32: u32 = 3;
    pub const INT64: u32 = 4;
    pub const UINT8: u32 = 5;
    pub const UINT16: u32 = 6;
    pub const UINT32: u32 = 7;
    pub const UINT64: u32 = 8;
    pub const FLOAT: u32 = 9;
    pub const DOUBLE: u32 = 10;
    pub const BOOLEAN: u32 = 11;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    NBirth,
    NData,
    NDeath,
    DBirth,
    DData,
    DDeath,
    /// NCMD, DCMD and STATE: nothing to record.
    Other,
}

struct Topic<'t> {
    kind: Kind,
    group: &'t str,
    node: &'t str,
    device: Option<&'t str>,
}

fn parse_topic<'t>(levels: &[&'t str]) -> Result<Topic<'t>, Rejection> {
    let not_sparkplug = || Rejection::TopicMismatch("not a Sparkplug B topic");
    if levels.first() != Some(&NAMESPACE) {
        return Err(not_sparkplug());
    }
    if levels.get(1) == Some(&"STATE") {
        return Ok(Topic {
            kind: Kind::Other,
            group: "",
            node: "",
            device: None,
        });
    }
    let (kind, device_message) = match levels.get(2).copied() {
        Some("NBIRTH") => (Kind::NBirth, false),
        Some("NDATA") => (Kind::NData, false),
        Some("NDEATH") => (Kind::NDeath, false),
        Some("NCMD") => (Kind::Other, false),
        Some("DBIRTH") => (Kind::DBirth, true),
        Some("DDATA") => (Kind::DData, true),
        Some("DDEATH") => (Kind::DDeath, true),
        Some("DCMD") => (Kind::Other, true),
        _ => return Err(not_sparkplug()),
    };
    let (group, node, device) = match (levels, device_message) {
        ([_, group, _, node], false) => (*group, *node, None),
        ([_, group, _, node, device], true) => (*group, *node, Some(*device)),
        _ => {
            return Err(Rejection::TopicMismatch(
                "wrong number of Sparkplug B levels",
            ));
        }
    };
    if group.is_empty() || node.is_empty() || device.is_some_and(str::is_empty) {
        return Err(Rejection::TopicMismatch("empty Sparkplug B id"));
    }
    Ok(Topic {
        kind,
        group,
        node,
        device,
    })
}

/// What a BIRTH taught about one metric.
#[derive(Debug, Clone)]
struct Def {
    name: String,
    datatype: Option<u32>,
}

/// The names, aliases and data types from one BIRTH.
#[derive(Debug, Default)]
struct Table {
    by_alias: HashMap<u64, Def>,
    by_name: HashMap<String, Option<u32>>,
}

impl Table {
    fn entries(&self) -> usize {
        self.by_alias.len() + self.by_name.len()
    }
}

#[derive(Debug, Default)]
struct Node {
    last_seq: Option<u64>,
    table: Table,
    devices: HashMap<String, Table>,
}

impl Node {
    fn entries(&self) -> usize {
        self.table.entries() + self.devices.values().map(Table::entries).sum::<usize>()
    }
}

/// Everything the decoder remembers between messages (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct State {
    nodes: HashMap<(String, String), Node>,
    /// Sum of `Table::entries` over every table, checked against [`MAX_ENTRIES`].
    entries: usize,
}

impl State {
    /// Decodes one message on a topic the rule matched; `levels` is the split topic.
    pub(crate) fn decode(
        &mut self,
        levels: &[&str],
        payload: &[u8],
        rule: &Rule,
        received_ms: i64,
        tally: &mut Tally,
    ) -> Result<Vec<Decoded>, Rejection> {
        let topic = parse_topic(levels)?;
        let key = (topic.group.to_owned(), topic.node.to_owned());
        match topic.kind {
            Kind::Other => return Ok(Vec::new()),
            Kind::NDeath => {
                // The node's last will; whatever it carries, the node is gone.
                self.forget_node(&key);
                return Ok(Vec::new());
            }
            _ => {}
        }
        let payload =
            Payload::decode(payload).map_err(|e| Rejection::InvalidSparkplug(e.to_string()))?;
        let default_ms = match payload.timestamp {
            Some(ts) => timestamp_ms(ts)?,
            None => received_ms,
        };

        if topic.kind == Kind::NBirth {
            self.forget_node(&key);
        }
        self.check_seq(&key, topic.kind, payload.seq, tally);
        match (topic.kind, topic.device) {
            (Kind::NBirth, _) => {
                let table = self.learn(&payload.metrics, tally);
                match self.node_mut(key.clone()) {
                    Some(node) => node.table = table,
                    None => self.unlearn(&table, tally),
                }
            }
            (Kind::DBirth, Some(device)) => {
                self.forget_device(&key, device);
                let table = self.learn(&payload.metrics, tally);
                match self.node_mut(key.clone()) {
                    Some(node) => {
                        node.devices.insert(device.to_owned(), table);
                    }
                    None => self.unlearn(&table, tally),
                }
            }
            (Kind::DDeath, Some(device)) => {
                self.forget_device(&key, device);
                return Ok(Vec::new());
            }
            _ => {}
        }

        let empty = Table::default();
        let table = self
            .nodes
            .get(&key)
            .and_then(|node| match topic.device {
                Some(device) => node.devices.get(device),
                None => Some(&node.table),
            })
            .unwrap_or(&empty);
        let mut labels = vec![
            ("group".to_owned(), topic.group.to_owned()),
            ("edge_node".to_owned(), topic.node.to_owned()),
        ];
        if let Some(device) = topic.device {
            labels.push(("device".to_owned(), device.to_owned()));
        }
        let mut out = Vec::with_capacity(payload.metrics.len());
        for metric in &payload.metrics {
            let def = metric.alias.and_then(|a| table.by_alias.get(&a));
            let Some(name) = metric.name.as_deref().or(def.map(|d| d.name.as_str())) else {
                tally.skip(SkipReason::UnknownAlias, 1);
                continue;
            };
            if !rule.fields.keeps(name, '/') {
                continue;
            }
            let datatype = metric
                .datatype
                .filter(|t| *t != datatype::UNKNOWN)
                .or_else(|| def.and_then(|d| d.datatype))
                .or_else(|| table.by_name.get(name).copied().flatten());
            let value = match numeric(datatype, metric) {
                Some(v) if metric.is_null != Some(true) => v,
                _ => {
                    tally.skip(SkipReason::NotNumeric, 1);
                    continue;
                }
            };
            let timestamp_ms = match metric.timestamp {
                Some(ts) => timestamp_ms(ts)?,
                None => default_ms,
            };
            let name = rule.fields.renamed(name).unwrap_or(name).to_owned();
            out.push(Decoded {
                name: Some(name),
                labels: labels.clone(),
                timestamp_ms,
                value,
            });
        }
        Ok(out)
    }

    /// The table of one BIRTH, within the global entry limit.
    fn learn(&mut self, metrics: &[Metric], tally: &mut Tally) -> Table {
        let mut table = Table::default();
        for m in metrics {
            let Some(name) = &m.name else {
                // A BIRTH must name every metric; one without a name teaches nothing.
                continue;
            };
            let datatype = m.datatype.filter(|t| *t != datatype::UNKNOWN);
            let new_entries = usize::from(!table.by_name.contains_key(name))
                + usize::from(m.alias.is_some_and(|a| !table.by_alias.contains_key(&a)));
            if self.entries + new_entries > MAX_ENTRIES {
                tally.skip(SkipReason::AliasLimit, 1);
                continue;
            }
            self.entries += new_entries;
            table.by_name.insert(name.clone(), datatype);
            if let Some(alias) = m.alias {
                table.by_alias.insert(
                    alias,
                    Def {
                        name: name.clone(),
                        datatype,
                    },
                );
            }
        }
        table
    }

    /// Gives back the entries of a table that could not be kept.
    fn unlearn(&mut self, table: &Table, tally: &mut Tally) {
        self.entries -= table.entries();
        tally.skip(SkipReason::AliasLimit, table.by_alias.len() as u64);
    }

    /// The node's state, created if there is room.
    fn node_mut(&mut self, key: (String, String)) -> Option<&mut Node> {
        if !self.nodes.contains_key(&key) && self.nodes.len() >= MAX_NODES {
            return None;
        }
        Some(self.nodes.entry(key).or_default())
    }

    fn forget_node(&mut self, key: &(String, String)) {
        if let Some(node) = self.nodes.remove(key) {
            self.entries -= node.entries();
        }
    }

    fn forget_device(&mut self, key: &(String, String), device: &str) {
        if let Some(table) = self
            .nodes
            .get_mut(key)
            .and_then(|node| node.devices.remove(device))
        {
            self.entries -= table.entries();
        }
    }

    /// Counts a gap when `seq` does not follow the node's previous message.
    fn check_seq(
        &mut self,
        key: &(String, String),
        kind: Kind,
        seq: Option<u64>,
        tally: &mut Tally,
    ) {
        let Some(seq) = seq else { return };
        if kind == Kind::NBirth {
            if let Some(node) = self.node_mut(key.clone()) {
                node.last_seq = Some(seq);
            }
            return;
        }
        if let Some(node) = self.nodes.get_mut(key) {
            if let Some(last) = node.last_seq
                && seq != (last + 1) % 256
            {
                tally.seq_gaps += 1;
            }
            node.last_seq = Some(seq);
        }
    }
}

fn timestamp_ms(ts: u64) -> Result<i64, Rejection> {
    i64::try_from(ts).map_err(|_| Rejection::InvalidTimestamp(format!("{ts} ms is out of range")))
}

/// The metric's value as a number, or `None` if its type is not numeric or it has no value.
fn numeric(datatype: Option<u32>, m: &Metric) -> Option<f64> {
    use datatype::*;
    // 8- to 32-bit types normally use `int_value`, 64-bit ones `long_value`; some encoders
    // use the other one, so each falls back to the other.
    let small = m.int_value.map(u64::from).or(m.long_value);
    let big = m.long_value.or(m.int_value.map(u64::from));
    let float = m.float_value.map(f64::from);
    let boolean = m.boolean_value.map(|b| if b { 1.0 } else { 0.0 });
    // Truncating casts on purpose: signed values are two's complement in the low bits.
    match datatype {
        Some(INT8) => small.map(|v| f64::from(v as i8)),
        Some(INT16) => small.map(|v| f64::from(v as i16)),
        Some(INT32) => small.map(|v| f64::from(v as i32)),
        Some(INT64) => big.map(|v| v as i64 as f64),
        Some(UINT8) => small.map(|v| f64::from(v as u8)),
        Some(UINT16) => small.map(|v| f64::from(v as u16)),
        Some(UINT32) => small.map(|v| f64::from(v as u32)),
        Some(UINT64) => big.map(|v| v as f64),
        Some(FLOAT) => float.or(m.double_value),
        Some(DOUBLE) => m.double_value.or(float),
        Some(BOOLEAN) => boolean,
        Some(_) => None,
        None => m
            .double_value
            .or(float)
            .or(boolean)
            .or(big.map(|v| v as f64)),
    }
}

#[cfg(test)]
mod tests;
