use super::*;

#[test]
fn file_urls_map_to_local_paths() {
    let check = |url: &str, expected: Result<&str, &str>| {
        let got = file_url_path(url);
        match expected {
            Ok(path) => assert_eq!(got, Ok(PathBuf::from(path)), "{url}"),
            Err(fragment) => {
                let error = got.unwrap_err();
                assert!(error.contains(fragment), "{url}: {error}");
            }
        }
    };
    check("file:///data/in/a.root", Ok("/data/in/a.root"));
    check("file://localhost/data/in/a.root", Ok("/data/in/a.root"));
    check("file:///", Ok("/"));
    check("root://eos/a.root", Err("only file://"));
    check("/data/a.root", Err("only file://"));
    check("file://otherhost/data/a.root", Err("absolute"));
    check("file://relative/a.root", Err("absolute"));
}

#[test]
fn adler32_checksums_parse_and_format() {
    assert_eq!(parse_checksum("adler32:0a1b2c3d"), Ok(0x0a1b_2c3d));
    assert_eq!(parse_checksum("adler32:0A1B2C3D"), Ok(0x0a1b_2c3d));
    assert_eq!(format_adler32(0x0a1b_2c3d), "adler32:0a1b2c3d");
    assert_eq!(format_adler32(1), "adler32:00000001");
    for bad in
        ["md5:d41d8cd98f00b204e9800998ecf8427e", "adler32:123", "adler32:+1234567", "adler32:0a1b2c3dd", "0a1b2c3d"]
    {
        assert!(parse_checksum(bad).is_err(), "{bad}");
    }
}

#[test]
fn lfns_must_stay_inside_their_directory() {
    for good in ["a.root", "EVNT.01234._000001.pool.root.1", ".hidden", "..dots"] {
        assert_eq!(check_lfn(good), Ok(()), "{good}");
    }
    for bad in ["", ".", "..", "../etc/passwd", "sub/a.root", "/abs", "nul\0byte"] {
        assert!(check_lfn(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn adler32_matches_the_known_value() {
    // The value from the Adler-32 definition's worked example.
    let mut adler = adler2::Adler32::new();
    adler.write_slice(b"Wikipedia");
    assert_eq!(format_adler32(adler.checksum()), "adler32:11e60398");
}
