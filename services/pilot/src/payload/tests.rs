use super::*;

fn exited(code: i32) -> ExitStatus {
    ExitStatus::from_raw(code << 8)
}

fn signalled(signal: i32) -> ExitStatus {
    ExitStatus::from_raw(signal)
}

#[test]
fn exit_codes_follow_the_shell_convention() {
    assert_eq!(exit_code(exited(0)), 0);
    assert_eq!(exit_code(exited(3)), 3);
    assert_eq!(exit_code(signalled(9)), 137);
    assert_eq!(exit_code(signalled(15)), 143);
}

#[test]
fn exits_are_described() {
    assert_eq!(describe_exit(exited(3)), "payload exited with code 3");
    assert_eq!(describe_exit(signalled(9)), "payload was killed by signal 9 (SIGKILL)");
}

#[test]
fn tails_drop_a_character_cut_in_half() {
    let check = |bytes: &[u8], expected: &str| assert_eq!(decode_tail(bytes), expected);
    check(b"plain", "plain");
    check("é done".as_bytes(), "é done");
    // The last byte of "é" (0xc3 0xa9) survived the cut: dropped.
    check(&[0xa9, b'o', b'k'], "ok");
    // The last two bytes of "€" (0xe2 0x82 0xac).
    check(&[0x82, 0xac, b'o', b'k'], "ok");
    // Invalid bytes elsewhere are replaced, not an error.
    check(&[b'a', 0xff, b'b'], "a\u{fffd}b");
    check(b"", "");
}
