//! The read side: [`query::DataSource`] over the keyspaces.

use super::last_value::Lookup;
use super::vault::{Encryption, Vault};
use super::{Storage, keys};
use foldhash::{HashSet, HashSetExt};
use protocols::{Labels, Sample, SeriesId, Tenant, codec};
use query::{DataSource, DataSourceError, MatchOp, Matcher, SeriesRef};
use std::collections::BTreeSet;

/// A last-value miss fills the cache when its window ends at most this long before "now":
/// the fill reads on to the end of time, which then adds at most this much to the read.
const FILL_WITHIN_MS: i64 = 60_000;

fn unavailable(e: impl std::fmt::Display) -> DataSourceError {
    DataSourceError::Unavailable(e.to_string())
}

impl Storage {
    /// Series ids of `tenant` that carry label `name` with a value accepted by `accept`.
    /// `value_prefix`: every accepted value starts with it, so only those values are scanned
    /// (in a store in clear; hashed values have no order to use).
    fn ids_for(
        &self,
        tenant: &str,
        name: &str,
        value_prefix: &str,
        accept: impl Fn(&str) -> bool,
    ) -> Result<HashSet<SeriesId>, DataSourceError> {
        if let Vault::Sealed(e) = &self.ks.vault {
            return self.sealed_ids_for(e, tenant, name, accept);
        }
        let prefix = keys::name_prefix(tenant, name);
        let mut scan = prefix.clone();
        scan.extend_from_slice(value_prefix.as_bytes());
        let mut ids = HashSet::new();
        // Keys of one value are adjacent: the matcher runs once per distinct value.
        let mut last: Option<(Vec<u8>, bool)> = None;
        for kv in self.ks.postings.prefix(&scan) {
            let key = kv.key().map_err(unavailable)?;
            let rest = &key[prefix.len()..];
            let Some((value, _)) = keys::split_field(rest) else {
                continue;
            };
            let accepted = match &last {
                Some((v, accepted)) if v.as_slice() == value => *accepted,
                _ => {
                    let accepted = accept(std::str::from_utf8(value).unwrap_or_default());
                    last = Some((value.to_vec(), accepted));
                    accepted
                }
            };
            if let Some(id) = keys::posting_series(&key).filter(|_| accepted) {
                ids.insert(id);
            }
        }
        Ok(ids)
    }

    /// [`Self::ids_for`] over the hashed index: the dictionary's values of `name` are opened
    /// and matched, then the postings of the matching ones are read.
    fn sealed_ids_for(
        &self,
        e: &Encryption,
        tenant: &str,
        name: &str,
        accept: impl Fn(&str) -> bool,
    ) -> Result<HashSet<SeriesId>, DataSourceError> {
        let mut ids = HashSet::new();
        let name_postings = Vault::sealed_name_postings(e, tenant, name);
        let name_hash = &name_postings[keys::tenant_prefix(tenant).len() + 1..];
        for (value_hash, value) in self.sealed_dictionary(&Vault::sealed_values(e, tenant, name))? {
            if !accept(&value) {
                continue;
            }
            let prefix = Vault::sealed_postings_of(tenant, name_hash, &value_hash);
            self.posting_ids(&prefix, &mut ids)?;
        }
        Ok(ids)
    }

    /// Adds the series of every posting under `prefix` to `ids`.
    fn posting_ids(
        &self,
        prefix: &[u8],
        ids: &mut HashSet<SeriesId>,
    ) -> Result<(), DataSourceError> {
        for kv in self.ks.postings.prefix(prefix) {
            let key = kv.key().map_err(unavailable)?;
            if let Some(id) = keys::posting_series(&key) {
                ids.insert(id);
            }
        }
        Ok(())
    }

    /// The dictionary entries under `prefix`: (the hash after the prefix, the opened text).
    fn sealed_dictionary(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, String)>, DataSourceError> {
        let mut out = Vec::new();
        for kv in self.ks.postings.prefix(prefix) {
            let (k, v) = kv.into_inner().map_err(unavailable)?;
            let text = self.ks.vault.open_index(&k, &v).map_err(unavailable)?;
            let text = String::from_utf8_lossy(&text).into_owned();
            out.push((k[prefix.len()..].to_vec(), text));
        }
        Ok(out)
    }

    /// Whether any posting starts with `prefix`.
    fn any_posting(&self, prefix: &[u8]) -> Result<bool, DataSourceError> {
        match self.ks.postings.prefix(prefix).next() {
            Some(kv) => kv.key().map(|_| true).map_err(unavailable),
            None => Ok(false),
        }
    }

    /// Label names (`name: None`) or the values of one name, from the encrypted dictionary:
    /// only those that still have a posting.
    fn sealed_listing(
        &self,
        e: &Encryption,
        tenant: &str,
        name: Option<&str>,
    ) -> Result<Vec<String>, DataSourceError> {
        let mut out = BTreeSet::new();
        match name {
            None => {
                for (name_hash, name) in self.sealed_dictionary(&Vault::sealed_names(tenant))? {
                    if self.any_posting(&Vault::sealed_postings_of(tenant, &name_hash, &[]))? {
                        out.insert(name);
                    }
                }
            }
            Some(name) => {
                let name_postings = Vault::sealed_name_postings(e, tenant, name);
                let name_hash = &name_postings[keys::tenant_prefix(tenant).len() + 1..];
                let values = Vault::sealed_values(e, tenant, name);
                for (value_hash, value) in self.sealed_dictionary(&values)? {
                    let prefix = Vault::sealed_postings_of(tenant, name_hash, &value_hash);
                    if self.any_posting(&prefix)? {
                        out.insert(value);
                    }
                }
            }
        }
        Ok(out.into_iter().collect())
    }

    /// Candidate series for a selector: the intersection of the postings of every matcher
    /// that rejects the empty string (equality, regex or negation alike), or `None` when
    /// every matcher accepts it (the tenant's series are the candidates then). Every
    /// candidate is still checked against all matchers afterwards.
    fn candidates(
        &self,
        tenant: &str,
        matchers: &[Matcher],
    ) -> Result<Option<HashSet<SeriesId>>, DataSourceError> {
        let mut result: Option<HashSet<SeriesId>> = None;
        // Equality first: one pair's postings are usually the smallest set.
        let (equal, other): (Vec<&Matcher>, Vec<&Matcher>) = matchers
            .iter()
            .filter(|m| !m.matches_empty())
            .partition(|m| matches!(m.op, MatchOp::Equal(_)));
        for m in equal.into_iter().chain(other) {
            if result.as_ref().is_some_and(HashSet::is_empty) {
                break;
            }
            // A literal alternation (`user|system`) is looked up value by value, as equality.
            let values = match &m.op {
                MatchOp::Equal(v) => Some(vec![v.as_str()]),
                _ => m.regex_values(),
            };
            let ids = match values {
                Some(values) => {
                    let mut ids = HashSet::new();
                    for v in values {
                        self.posting_ids(&self.ks.vault.pair_prefix(tenant, &m.name, v), &mut ids)?;
                    }
                    ids
                }
                None => {
                    let value_prefix = m.regex_prefix().unwrap_or_default();
                    self.ids_for(tenant, &m.name, value_prefix, |v| m.matches(v))?
                }
            };
            result = Some(match result {
                None => ids,
                Some(prev) => {
                    let (small, large) = if prev.len() <= ids.len() {
                        (prev, ids)
                    } else {
                        (ids, prev)
                    };
                    small.into_iter().filter(|id| large.contains(id)).collect()
                }
            });
        }
        Ok(result)
    }

    fn load_labels(&self, id: SeriesId) -> Result<Option<(Tenant, Labels)>, DataSourceError> {
        let Some(v) = self
            .ks
            .series
            .get(keys::series_key(id))
            .map_err(unavailable)?
        else {
            return Ok(None);
        };
        let v = self
            .ks
            .vault
            .open_index(&keys::series_key(id), &v)
            .map_err(|e| DataSourceError::Corrupt {
                series: id,
                detail: format!("series entry: {e}"),
            })?;
        postcard::from_bytes(&v)
            .map(Some)
            .map_err(|e| DataSourceError::Corrupt {
                series: id,
                detail: format!("series entry: {e}"),
            })
    }

    /// The distinct values of the posting-key field right after `prefix` (label names after
    /// a tenant prefix, values after a name prefix), sorted. Skip-scan: reads one key per
    /// distinct field, then jumps past every key that shares it.
    fn distinct_fields(&self, prefix: &[u8]) -> Result<Vec<String>, DataSourceError> {
        let mut fields = BTreeSet::new();
        let mut from = prefix.to_vec();
        while let Some(kv) = self.ks.postings.range(from.as_slice()..).next() {
            let key = kv.key().map_err(unavailable)?;
            let Some((field, _)) = key.strip_prefix(prefix).and_then(keys::split_field) else {
                break;
            };
            fields.insert(String::from_utf8_lossy(field).into_owned());
            let mut next = prefix.to_vec();
            next.extend_from_slice(field);
            from = keys::skip_past(&next);
        }
        Ok(fields.into_iter().collect())
    }

    fn all_series_of(&self, tenant: &str) -> Result<HashSet<SeriesId>, DataSourceError> {
        let name = protocols::model::METRIC_NAME_LABEL;
        let Vault::Sealed(e) = &self.ks.vault else {
            return self.ids_for(tenant, name, "", |_| true);
        };
        let mut ids = HashSet::new();
        self.posting_ids(&Vault::sealed_name_postings(e, tenant, name), &mut ids)?;
        Ok(ids)
    }
}

impl Storage {
    /// Calls `f` with every stored chunk of `series` (in `tenant`'s partitions) that may hold
    /// a sample in `start_ms..=end_ms`, in key order (first timestamp, then write sequence),
    /// opened and with its checksum-verified header, until `f` answers `false`.
    fn chunks_overlapping(
        &self,
        tenant: &Tenant,
        series: SeriesId,
        start_ms: i64,
        end_ms: i64,
        mut f: impl FnMut(u64, &[u8], &codec::ChunkHeader) -> Result<bool, DataSourceError>,
    ) -> Result<(), DataSourceError> {
        // Chunks never span two days, so every chunk holding a sample in range starts at or
        // after the first day's start (and at or before `end_ms`, by the key range).
        let first_day = keys::day_start(start_ms);
        let from = keys::chunk_key(series, first_day, 0);
        let to = keys::chunk_key(series, end_ms, u64::MAX);
        for partition in self.ks.chunks.overlapping(tenant, first_day, end_ms) {
            for kv in partition.range(from..=to) {
                let (k, v) = kv.into_inner().map_err(unavailable)?;
                let (_, _, seq) =
                    keys::decode_chunk_key(&k).ok_or_else(|| DataSourceError::Corrupt {
                        series,
                        detail: format!("chunk key of {} bytes", k.len()),
                    })?;
                let v = self
                    .ks
                    .vault
                    .open_chunk(&k, &v)
                    .map_err(|e| corrupt_chunk(series, seq, e))?;
                let header = codec::header(&v).map_err(|e| corrupt_chunk(series, seq, e))?;
                if header.max_ts < start_ms {
                    continue;
                }
                if !f(seq, &v, &header)? {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}

fn corrupt_chunk(series: SeriesId, seq: u64, e: impl std::fmt::Display) -> DataSourceError {
    DataSourceError::Corrupt {
        series,
        detail: format!("chunk {seq}: {e}"),
    }
}

impl DataSource for Storage {
    fn select_series(
        &self,
        tenant: &Tenant,
        matchers: &[Matcher],
    ) -> Result<Vec<SeriesRef>, DataSourceError> {
        let ids = match self.candidates(tenant.as_str(), matchers)? {
            Some(ids) => ids,
            None => self.all_series_of(tenant.as_str())?,
        };
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let Some((owner, labels)) = self.load_labels(id)? else {
                continue;
            };
            if &owner != tenant {
                continue;
            }
            let accepted = matchers
                .iter()
                .all(|m| m.matches(labels.get(&m.name).unwrap_or_default()));
            if accepted {
                out.push(SeriesRef { id, labels });
            }
        }
        Ok(out)
    }

    fn samples(
        &self,
        series: SeriesId,
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<Sample>, DataSourceError> {
        let Some(tenant) = self.ks.tenant_of(series).map_err(unavailable)? else {
            return Ok(Vec::new());
        };
        self.samples_of(&tenant, series, start_ms, end_ms)
    }

    /// Reads only `tenant`'s partitions: a series id of another tenant finds nothing there
    /// (ids are hashed from tenant and labels, partitions are per tenant).
    fn samples_of(
        &self,
        tenant: &Tenant,
        series: SeriesId,
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<Sample>, DataSourceError> {
        if start_ms > end_ms {
            return Ok(Vec::new());
        }
        // The head first, then fjall: a head flush between the two shows samples twice (they
        // merge), never zero times.
        let head = self.ks.head.range(series, start_ms, end_ms);
        // Chunks come in key order: by first timestamp, then write sequence. Where each
        // starts after the previous one ends (a sealed day, a head flush after it), their
        // samples are already one ascending run; otherwise they are merged by timestamp with
        // the last write winning.
        let mut pieces: Vec<(u64, Vec<Sample>)> = Vec::new();
        let mut in_order = true;
        let mut last_ts = i64::MIN;
        self.chunks_overlapping(tenant, series, start_ms, end_ms, |seq, chunk, header| {
            if header.min_ts <= last_ts {
                in_order = false;
            }
            last_ts = last_ts.max(header.max_ts);
            let mut samples = codec::decode(chunk).map_err(|e| corrupt_chunk(series, seq, e))?;
            samples.retain(|s| (start_ms..=end_ms).contains(&s.timestamp_ms));
            pieces.push((seq, samples));
            Ok(true)
        })?;
        let stored = if pieces.len() == 1 {
            pieces.pop().map(|(_, piece)| piece).unwrap_or_default()
        } else if in_order {
            let mut all = Vec::with_capacity(pieces.iter().map(|(_, p)| p.len()).sum());
            for (_, piece) in pieces {
                all.extend(piece);
            }
            all
        } else {
            let tagged = pieces
                .into_iter()
                .flat_map(|(seq, piece)| {
                    piece
                        .into_iter()
                        .map(move |s| (s.timestamp_ms, seq, s.value))
                })
                .collect();
            super::compactor::merge_last_wins(tagged)
        };
        Ok(if head.is_empty() {
            stored
        } else {
            super::head::overlay(stored, head)
        })
    }

    /// From the last-value cache when it knows; else a read, which fills the cache when the
    /// window ends near "now" (reading on to the end of time then costs next to nothing more).
    fn latest_sample(
        &self,
        tenant: &Tenant,
        series: SeriesId,
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Option<Sample>, DataSourceError> {
        if start_ms > end_ms {
            return Ok(None);
        }
        let cache = &self.ks.last_values;
        if let Lookup::Hit(answer) = cache.lookup(series, start_ms, end_ms) {
            return Ok(answer);
        }
        let near_now = end_ms >= self.ks.clock.now_ms().saturating_sub(FILL_WITHIN_MS);
        let Some(token) = near_now.then(|| cache.begin_fill(series)).flatten() else {
            return Ok(self.samples_of(tenant, series, start_ms, end_ms)?.pop());
        };
        match self.samples_of(tenant, series, start_ms, i64::MAX) {
            Ok(samples) => {
                cache.finish_fill(series, token, start_ms, samples.last().copied());
                Ok(samples.into_iter().rev().find(|s| s.timestamp_ms <= end_ms))
            }
            Err(e) => {
                cache.cancel_fill(series, token);
                Err(e)
            }
        }
    }

    /// The head, then each chunk's header; a chunk is decoded only when it starts before the
    /// range and ends after it (it may have a gap just there).
    fn has_samples(
        &self,
        tenant: &Tenant,
        series: SeriesId,
        start_ms: i64,
        end_ms: i64,
    ) -> Result<bool, DataSourceError> {
        if start_ms > end_ms {
            return Ok(false);
        }
        if self.ks.head.any_in(series, tenant, start_ms, end_ms) {
            return Ok(true);
        }
        let mut found = false;
        self.chunks_overlapping(tenant, series, start_ms, end_ms, |seq, chunk, header| {
            // The chunk reaches into the range; unless it also spans all of it, one of its
            // ends is in the range.
            found = header.min_ts >= start_ms
                || header.max_ts <= end_ms
                || codec::decode(chunk)
                    .map_err(|e| corrupt_chunk(series, seq, e))?
                    .iter()
                    .any(|s| (start_ms..=end_ms).contains(&s.timestamp_ms));
            Ok(!found)
        })?;
        Ok(found)
    }

    fn label_names(&self, tenant: &Tenant) -> Result<Vec<String>, DataSourceError> {
        if let Vault::Sealed(e) = &self.ks.vault {
            return self.sealed_listing(e, tenant.as_str(), None);
        }
        self.distinct_fields(&keys::tenant_prefix(tenant.as_str()))
    }

    fn label_values(&self, tenant: &Tenant, name: &str) -> Result<Vec<String>, DataSourceError> {
        if let Vault::Sealed(e) = &self.ks.vault {
            return self.sealed_listing(e, tenant.as_str(), Some(name));
        }
        self.distinct_fields(&keys::name_prefix(tenant.as_str(), name))
    }
}
