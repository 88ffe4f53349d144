//! Where a delivery's row goes in the SQLite inbox's unique index.
//!
//! GitHub's delivery ids are time-based (version 1) UUIDs: GitHub's own
//! examples, `72d3162e-cc78-11e3-81ab-4c9367dc0958` in its webhook docs and
//! `0b989ba4-242f-11e5-81e1-c7b6966d2516` in its REST description, carry
//! the `1` version digit, and their third group dates them (2014, 2015).
//! Written as text a version 1 UUID starts with the *lowest* bits of its
//! timestamp, so ids sorted as text are in random order, and each new one
//! lands on an index page of its own: one more page written per delivery,
//! in every commit and every checkpoint. Put the timestamp's high digits
//! first and ids sort by the time they were made, so each commit's new
//! entries go together at the end of the index.
//!
//! The index is on (`delivery_order`, `delivery_id`). The order is a
//! function of the id alone, so a pair is unique exactly when its id is,
//! and a redelivery still conflicts with the row it repeats. An id of any
//! other shape gets the empty order and sorts by itself, as before.
//!
//! Migration 0010 computes the same order in SQL for the rows stored
//! before it, and a test in `store::sqlite` holds the two equal: an order
//! computed two ways that disagreed would let a redelivery of an old id
//! through.

/// The order of `id` in the inbox's index: for a version 1 UUID its
/// timestamp, high digits first (`time_hi`, `time_mid`, `time_low`, 15 hex
/// digits); for any other id, empty. Pure.
pub fn delivery_order(id: &str) -> String {
    if !is_version_1_uuid(id) {
        return String::new();
    }
    // 01234567-9abc-e...: time_low 0..8, time_mid 9..13, time_hi 15..18
    // (14 is the version digit).
    let mut order = String::with_capacity(15);
    order.push_str(&id[15..18]);
    order.push_str(&id[9..13]);
    order.push_str(&id[0..8]);
    order
}

/// 36 ASCII characters, none of them NUL (SQLite's `length()` of a text
/// stops at a NUL), dashes where a UUID has them, and `1` as the version
/// digit. The hex digits are not checked: the order only has to be the
/// same function of the id everywhere, and migration 0010 checks the same.
fn is_version_1_uuid(id: &str) -> bool {
    let b = id.as_bytes();
    b.len() == 36
        && id.is_ascii()
        && !b.contains(&0)
        && [8, 13, 18, 23].iter().all(|&i| b[i] == b'-')
        && b[14] == b'1'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_1_uuid_orders_by_its_timestamp() {
        assert_eq!(
            delivery_order("72d3162e-cc78-11e3-81ab-4c9367dc0958"),
            "1e3cc7872d3162e"
        );
        // Made 1 s apart: the later sorts after, which as text it did not.
        let earlier = "f0000000-8e16-11ee-9c2b-0242ac120002";
        let later = "0989e680-8e17-11ee-9c2b-0242ac120002";
        assert!(later < earlier);
        assert!(delivery_order(earlier) < delivery_order(later));
    }

    #[test]
    fn other_ids_have_the_empty_order() {
        for id in [
            "",
            "delivery-1",
            "72d3162e-cc78-41e3-81ab-4c9367dc0958", // version 4
            "72d3162e-cc78-11e3-81ab-4c9367dc095",  // one short
            "72d3162e_cc78-11e3-81ab-4c9367dc0958",
            "72d3162e-cc78-11e3-81ab-4c9367dc09é",
            "72d3162e-cc78-11e3-81ab-4c9367dc\u{0}958",
        ] {
            assert_eq!(delivery_order(id), "", "{id}");
        }
    }
}
