//! Step 1 of a batch, without the database: every message decoded into its dimension records and
//! datasets, checked against the universe and the registered dataset types. A message that fails
//! is rejected; the others go on.

use schema::htm::HtmPixelization;
use schema::{DecodeError, PromptProcessingOutputEvent};

use super::catalog::Layout;
use super::datasets::{self, PreparedDataset};
use super::model::{Table, Tables};
use super::records::{self, PreparedRecord};
use super::rejections::Rejections;
use crate::outcome::{RejectReason, Rejection};
use crate::universe::Universe;

/// One message of the batch, ready for the database.
#[derive(Debug, Clone)]
pub struct PreparedMessage {
    /// Its position in the batch.
    pub index: usize,
    /// Its dimension records.
    pub records: Vec<PreparedRecord>,
    /// Its datasets.
    pub datasets: Vec<PreparedDataset>,
}

/// Decodes raw Kafka values; a value that does not decode is rejected (as `other_message_type`
/// or `invalid`).
pub fn decode(values: &[&[u8]]) -> (Vec<(usize, PromptProcessingOutputEvent)>, Vec<Rejection>) {
    let mut events = Vec::with_capacity(values.len());
    let mut rejected = Vec::new();
    for (index, value) in values.iter().enumerate() {
        match PromptProcessingOutputEvent::from_json(value) {
            Ok(event) => events.push((index, event)),
            Err(error) => rejected.push(Rejection {
                index,
                reason: decode_reason(&error),
                error: error.to_string(),
            }),
        }
    }
    (events, rejected)
}

/// The reject reason of a value that does not decode.
fn decode_reason(error: &DecodeError) -> RejectReason {
    if error.is_other_message_type() {
        RejectReason::OtherMessageType
    } else {
        RejectReason::Invalid
    }
}

/// Prepares every message against the cached layout (its dataset types already resolved).
pub fn prepare(
    universe: &Universe,
    htm: &HtmPixelization,
    layout: &Layout,
    events: &[(usize, PromptProcessingOutputEvent)],
    rejections: &mut Rejections,
) -> Vec<PreparedMessage> {
    let mut prepared = Vec::with_capacity(events.len());
    let mut envelopes = records::Envelopes::default();
    for (index, event) in events {
        let records: Result<Vec<PreparedRecord>, _> = event
            .dimension_records
            .iter()
            .map(|r| records::prepare(universe, &layout.tables, htm, &mut envelopes, r))
            .collect();
        let result = records.and_then(|records| {
            datasets::prepare(event, &layout.dataset_types, &layout.tables)
                .map(|datasets| (records, datasets))
        });
        match result {
            Ok((records, datasets)) => prepared.push(PreparedMessage {
                index: *index,
                records,
                datasets,
            }),
            Err((reason, error)) => rejections.reject(*index, reason, error),
        }
    }
    prepared
}

/// The datasets of the messages not rejected, each with its message's position.
pub fn live_datasets<'a>(
    prepared: &'a [PreparedMessage],
    rejections: &Rejections,
) -> Vec<(usize, &'a PreparedDataset)> {
    prepared
        .iter()
        .filter(|m| !rejections.contains(m.index))
        .flat_map(|m| m.datasets.iter().map(move |d| (m.index, d)))
        .collect()
}

/// Datasets by tags table, in a stable order (tables by name), each group with its table; groups
/// whose table the catalog does not have are left out (their datasets were refused when
/// prepared).
pub fn per_table<'a>(
    tables: &'a Tables,
    datasets: &[(usize, &'a PreparedDataset)],
) -> Vec<(&'a Table, Vec<&'a PreparedDataset>)> {
    group_by_table(datasets)
        .into_iter()
        .filter_map(|(name, group)| {
            let table = tables.get(&name)?;
            Some((table, group.into_iter().map(|(_, d)| d).collect()))
        })
        .collect()
}

/// Datasets grouped by tags table, in a stable order (tables by name).
fn group_by_table<'a>(
    datasets: &[(usize, &'a PreparedDataset)],
) -> Vec<(String, Vec<(usize, &'a PreparedDataset)>)> {
    let mut groups: Vec<(String, Vec<(usize, &PreparedDataset)>)> = Vec::new();
    for (index, dataset) in datasets {
        match groups
            .iter_mut()
            .find(|(t, _)| *t == dataset.dataset_type.tags_table)
        {
            Some((_, group)) => group.push((*index, dataset)),
            None => groups.push((
                dataset.dataset_type.tags_table.clone(),
                vec![(*index, dataset)],
            )),
        }
    }
    groups.sort_by(|a, b| a.0.cmp(&b.0));
    groups
}
