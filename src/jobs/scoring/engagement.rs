//! Engagement per contact row. Each event's contact_id is matched to the
//! row of its contact, and the decayed points are added up in arrays
//! indexed by that row. So no group-by or join on the text contact_id is
//! needed, and the result is already in the order of the contacts.

use polars::prelude::*;
use rayon::prelude::*;

/// The row index of an event whose contact_id is null or matches no contact.
const NO_ROW: u32 = u32::MAX;

/// Finds the slot of a contact_id: the contact's row when the contact ids
/// are strictly increasing, else one slot per distinct contact_id.
pub enum ContactIndex<'a> {
    /// Strictly increasing contact ids, searched from the last match, so
    /// events grouped by contact cost a comparison or two each.
    Sorted(Vec<&'a str>),
    /// A hash table from contact_id to slot, and the slot of every row
    /// (`NO_ROW` for a null contact_id). Rows with the same contact_id
    /// share a slot.
    Hashed {
        slots: PlHashMap<&'a str, u32>,
        row_slots: Vec<u32>,
    },
}

impl<'a> ContactIndex<'a> {
    /// Indexes the contact ids of the contacts, in their order.
    pub fn new(ids: &'a StringChunked) -> Self {
        if super::super::is_strictly_increasing(&ids.clone().into_column()) {
            return Self::Sorted(ids.iter().flatten().collect());
        }
        let mut slots: PlHashMap<&str, u32> = PlHashMap::with_capacity(ids.len());
        let mut row_slots = Vec::with_capacity(ids.len());
        for id in ids.iter() {
            let slot = match id {
                Some(id) => {
                    let next = slots.len() as u32;
                    *slots.entry(id).or_insert(next)
                }
                None => NO_ROW,
            };
            row_slots.push(slot);
        }
        Self::Hashed { slots, row_slots }
    }

    /// Returns the number of slots.
    pub fn slots(&self) -> usize {
        match self {
            Self::Sorted(ids) => ids.len(),
            Self::Hashed { slots, .. } => slots.len(),
        }
    }

    /// Returns the slot of every id in `ids`, or `NO_ROW`.
    fn slots_of(&self, ids: &StringChunked) -> Vec<u32> {
        let mut result = Vec::with_capacity(ids.len());
        let mut last: Option<(&str, u32)> = None;
        for id in ids.iter() {
            let Some(id) = id else {
                result.push(NO_ROW);
                continue;
            };
            if let Some((last_id, slot)) = last {
                if last_id == id {
                    result.push(slot);
                    continue;
                }
            }
            let slot = match self {
                Self::Sorted(sorted) => {
                    let hint = last.map_or(0, |(_, slot)| slot as usize);
                    search_from(sorted, id, hint).map_or(NO_ROW, |row| row as u32)
                }
                Self::Hashed { slots, .. } => slots.get(id).copied().unwrap_or(NO_ROW),
            };
            if slot != NO_ROW {
                last = Some((id, slot));
            }
            result.push(slot);
        }
        result
    }

    /// Returns the value of every contact row, from the values per slot.
    fn per_row(&self, values: Vec<f64>) -> Vec<f64> {
        match self {
            Self::Sorted(_) => values,
            Self::Hashed { row_slots, .. } => row_slots
                .iter()
                .map(|&slot| {
                    if slot == NO_ROW {
                        0.0
                    } else {
                        values[slot as usize]
                    }
                })
                .collect(),
        }
    }
}

/// Returns the position of `key` in the sorted `ids`, searching forward from
/// `hint` in steps that double (a galloping search), or behind it by
/// binary search.
fn search_from(ids: &[&str], key: &str, hint: usize) -> Option<usize> {
    let found = |range_start: usize, range: &[&str]| {
        range.binary_search(&key).ok().map(|i| i + range_start)
    };
    if hint >= ids.len() {
        return found(0, ids);
    }
    match ids[hint].cmp(key) {
        std::cmp::Ordering::Equal => Some(hint),
        std::cmp::Ordering::Greater => found(0, &ids[..hint]),
        std::cmp::Ordering::Less => {
            // Invariant: ids[low - 1] < key.
            let mut low = hint + 1;
            let mut step = 1;
            loop {
                let probe = hint + step;
                if probe >= ids.len() {
                    return found(low, &ids[low..]);
                }
                if ids[probe] >= key {
                    return found(low, &ids[low..=probe]);
                }
                low = probe + 1;
                step *= 2;
            }
        }
    }
}

/// The positive and the negative points of one rule group, per slot.
pub struct GroupSums {
    positive: Vec<f64>,
    negative: Vec<f64>,
}

impl GroupSums {
    pub fn new(slots: usize) -> Self {
        Self {
            positive: vec![0.0; slots],
            negative: vec![0.0; slots],
        }
    }

    /// Returns the group's engagement per contact row: the positive points
    /// capped at `cap`, plus the negative points.
    pub fn engagement(self, index: &ContactIndex, cap: Option<f64>) -> Vec<f64> {
        let per_slot = self
            .positive
            .into_iter()
            .zip(self.negative)
            .map(|(positive, negative)| {
                let positive = match cap {
                    Some(cap) if positive > cap => cap,
                    _ => positive,
                };
                positive + negative
            })
            .collect();
        index.per_row(per_slot)
    }
}

/// Adds the points of `events` to `sums`. `events` has a `contact_id`
/// column and a Float64 column of decayed points (null or 0 for none) for
/// each of `columns`. `sums[i]` takes the points of `columns[i]`.
pub fn add_points(
    index: &ContactIndex,
    mut events: DataFrame,
    columns: &[String],
    sums: &mut [&mut GroupSums],
) -> PolarsResult<()> {
    let chunks: Vec<DataFrame> = events.split_chunks().collect();
    // Matching contact ids is the expensive part, so chunks are matched in
    // parallel, and their points added in turn.
    let slots: Vec<Vec<u32>> = chunks
        .par_iter()
        .map(|chunk| -> PolarsResult<Vec<u32>> {
            Ok(index.slots_of(chunk.column("contact_id")?.str()?))
        })
        .collect::<PolarsResult<_>>()?;
    for (chunk, slots) in chunks.iter().zip(&slots) {
        for (column, sums) in columns.iter().zip(sums.iter_mut()) {
            let points = chunk.column(column.as_str())?.f64()?;
            for (points, &slot) in points.iter().zip(slots) {
                let Some(points) = points else {
                    continue;
                };
                if slot == NO_ROW {
                    continue;
                }
                if points > 0.0 {
                    sums.positive[slot as usize] += points;
                } else if points < 0.0 {
                    sums.negative[slot as usize] += points;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn galloping_search_finds_every_id() {
        let ids = ["a", "c", "e", "g", "i", "k", "m"];
        for hint in 0..ids.len() + 1 {
            for (position, id) in ids.iter().enumerate() {
                assert_eq!(
                    search_from(&ids, id, hint),
                    Some(position),
                    "{id} from {hint}"
                );
            }
            for missing in ["0", "b", "f", "l", "z"] {
                assert_eq!(
                    search_from(&ids, missing, hint),
                    None,
                    "{missing} from {hint}"
                );
            }
        }
    }

    fn engagement_of(
        contacts: &[Option<&str>],
        events: &[Option<&str>],
        points: &[f64],
    ) -> Vec<f64> {
        let contacts =
            StringChunked::from_iter_options("contact_id".into(), contacts.iter().copied());
        let index = ContactIndex::new(&contacts);
        let frame = DataFrame::new(
            events.len(),
            vec![
                Column::new("contact_id".into(), events),
                Column::new("points".into(), points),
            ],
        )
        .unwrap();
        let mut sums = GroupSums::new(index.slots());
        add_points(&index, frame, &["points".to_string()], &mut [&mut sums]).unwrap();
        sums.engagement(&index, Some(10.0))
    }

    #[test]
    fn sorted_contacts_sum_capped_points() {
        let engagement = engagement_of(
            &[Some("a"), Some("b"), Some("c")],
            &[Some("c"), Some("a"), Some("c"), None, Some("x"), Some("c")],
            &[8.0, 1.0, 4.0, 5.0, 5.0, -3.0],
        );
        assert_eq!(engagement, vec![1.0, 0.0, 7.0]);
    }

    #[test]
    fn unsorted_contacts_share_duplicate_ids() {
        let engagement = engagement_of(
            &[Some("c"), None, Some("a"), Some("c")],
            &[Some("c"), Some("a"), Some("c"), Some("b")],
            &[8.0, 1.0, 4.0, 5.0],
        );
        assert_eq!(engagement, vec![10.0, 0.0, 1.0, 10.0]);
    }
}
