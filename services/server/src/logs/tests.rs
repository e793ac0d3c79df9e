use super::*;

fn check(stored: u64, total: u64, cap: u64, offset: u64, len: usize, expected: Result<(usize, usize), &str>) {
    let got = plan(stored, total, cap, offset, len).map(|p| (p.skip, p.keep));
    match expected {
        Ok(expected) => {
            assert_eq!(got, Ok(expected), "stored {stored} total {total} cap {cap} offset {offset} len {len}")
        }
        Err(prefix) => assert!(got.as_ref().is_err_and(|e| e.starts_with(prefix)), "{got:?}"),
    }
}

#[test]
fn a_chunk_at_the_end_is_stored_whole() {
    check(0, 0, 100, 0, 10, Ok((0, 10)));
    check(10, 30, 100, 10, 5, Ok((0, 5)));
}

#[test]
fn a_retried_chunk_stores_nothing_twice() {
    check(10, 10, 100, 0, 10, Ok((10, 0)));
    check(15, 15, 100, 10, 5, Ok((5, 0)));
    // Overlapping the end: only the new part.
    check(12, 12, 100, 10, 5, Ok((2, 3)));
}

#[test]
fn a_gap_is_refused_naming_the_next_offset() {
    check(10, 10, 100, 11, 5, Err("11 is past the end of the stream (10 bytes stored): the next chunk starts at 10"));
}

#[test]
fn the_cap_keeps_the_head() {
    check(90, 95, 100, 90, 10, Ok((0, 5)));
    check(95, 100, 100, 95, 10, Ok((0, 0)));
    check(0, 100, 100, 0, 1, Ok((0, 0)));
}
