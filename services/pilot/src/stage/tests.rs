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

#[test]
fn checksums_of_each_kind_parse_and_name_their_mismatch_code() {
    assert_eq!(Checksum::parse("adler32:0A1B2C3D"), Ok(Checksum::Adler32(0x0a1b_2c3d)));
    let md5 = Checksum::parse("md5:D41D8CD98F00B204E9800998ECF8427E").unwrap();
    assert_eq!(md5.to_string(), "md5:d41d8cd98f00b204e9800998ecf8427e");
    assert_eq!(md5.mismatch_code(), error_codes::GET_MD5_MISMATCH);
    let sha = format!("sha256:{}", "ab".repeat(32));
    assert_eq!(Checksum::parse(&sha).unwrap().to_string(), sha);
    assert_eq!(Checksum::Adler32(1).mismatch_code(), error_codes::GET_ADLER32_MISMATCH);
    for bad in ["md5:d41d", "sha256:xyz", "crc32:00000000", ""] {
        let error = Checksum::parse(bad).unwrap_err();
        assert!(error.contains("adler32:") && error.contains("md5:") && error.contains("sha256:"), "{bad}: {error}");
    }
    assert!(Checksum::parse("adler32:123").unwrap_err().contains("8 hex digits"));
}

/// A small HTTP server standing in for a storage endpoint: `/files/<name>` serves `content`,
/// `/flaky/<n>` answers 503 `n` times then serves `content`, `/down` always 503, anything else
/// 404. Counts requests per path.
struct Storage {
    url: String,
    hits: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, u32>>>,
    _server: tokio::task::JoinHandle<()>,
}

const CONTENT: &[u8] = b"event data, 1 GB in real life\n";

async fn storage() -> Storage {
    use axum::http::StatusCode;
    let hits: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, u32>>> = Default::default();
    let counted = hits.clone();
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
        let hits = counted.clone();
        async move {
            let path = uri.path().to_owned();
            let n = {
                let mut hits = hits.lock().unwrap();
                let n = hits.entry(path.clone()).or_default();
                *n += 1;
                *n
            };
            if path.starts_with("/files/") {
                return (StatusCode::OK, CONTENT.to_vec());
            }
            if let Some(failures) = path.strip_prefix("/flaky/").and_then(|n| n.parse::<u32>().ok()) {
                return if n <= failures {
                    (StatusCode::SERVICE_UNAVAILABLE, b"busy".to_vec())
                } else {
                    (StatusCode::OK, CONTENT.to_vec())
                };
            }
            if path == "/down" {
                return (StatusCode::SERVICE_UNAVAILABLE, b"down".to_vec());
            }
            if path == "/forbidden" {
                return (StatusCode::FORBIDDEN, b"no".to_vec());
            }
            (StatusCode::NOT_FOUND, b"no such file".to_vec())
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Storage { url, hits, _server: server }
}

impl Storage {
    fn hits(&self, path: &str) -> u32 {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

fn fast() -> StageInPolicy {
    StageInPolicy { attempts: 3, backoff: Duration::from_millis(10), timeout: Duration::from_secs(10) }
}

fn input(lfn: &str, url: String, checksum: String) -> InputFile {
    InputFile { lfn: lfn.into(), url, size_bytes: CONTENT.len() as u64, checksum }
}

fn checksums_of(content: &[u8]) -> [String; 3] {
    let mut adler = adler2::Adler32::new();
    adler.write_slice(content);
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    [
        format_adler32(adler.checksum()),
        format!("md5:{}", hex(&<md5::Md5 as md5::Digest>::digest(content))),
        format!("sha256:{}", hex(&<sha2::Sha256 as sha2::Digest>::digest(content))),
    ]
}

#[tokio::test]
async fn http_inputs_are_downloaded_and_verified_with_each_checksum_kind() {
    let storage = storage().await;
    let dir = tempfile::tempdir().unwrap();
    let [adler, md5, sha256] = checksums_of(CONTENT);
    let inputs = [
        input("a.root", format!("{}/files/a", storage.url), adler),
        input("b.root", format!("{}/files/b", storage.url), md5),
        input("c.root", format!("{}/files/c", storage.url), sha256),
        input("d.root", format!("{}/files/d", storage.url), String::new()),
    ];
    stage_in(dir.path(), &inputs, &fast()).await.unwrap();
    for lfn in ["a.root", "b.root", "c.root", "d.root"] {
        assert_eq!(std::fs::read(dir.path().join(lfn)).unwrap(), CONTENT, "{lfn}");
    }
}

#[tokio::test]
async fn a_checksum_mismatch_fails_with_the_reference_code_and_is_not_retried() {
    let storage = storage().await;
    let dir = tempfile::tempdir().unwrap();
    let [_, _, sha256] = checksums_of(b"other");
    let [adler, md5, _] = checksums_of(b"other content");
    for (checksum, code) in [
        (adler, error_codes::GET_ADLER32_MISMATCH),
        (md5, error_codes::GET_MD5_MISMATCH),
        (sha256, error_codes::GET_MD5_MISMATCH),
    ] {
        let kind = checksum.split(':').next().unwrap().to_owned();
        let path = format!("/files/{kind}");
        let error = stage_in(dir.path(), &[input("x.root", format!("{}{path}", storage.url), checksum)], &fast())
            .await
            .unwrap_err();
        assert_eq!(error.code, code, "{}", error.diag);
        assert!(error.diag.contains("x.root") && error.diag.contains("expected"), "{}", error.diag);
        assert_eq!(storage.hits(&path), 1, "a mismatch is not retried");
    }
}

#[tokio::test]
async fn a_missing_file_fails_at_once_and_transient_failures_are_retried_with_backoff() {
    let storage = storage().await;
    let dir = tempfile::tempdir().unwrap();
    let [adler, ..] = checksums_of(CONTENT);

    let error = stage_in(dir.path(), &[input("m", format!("{}/missing", storage.url), adler.clone())], &fast())
        .await
        .unwrap_err();
    assert_eq!(error.code, error_codes::NO_SUCH_FILE, "{}", error.diag);
    assert!(error.diag.contains("404"), "{}", error.diag);
    assert_eq!(storage.hits("/missing"), 1);

    let error = stage_in(dir.path(), &[input("f", format!("{}/forbidden", storage.url), adler.clone())], &fast())
        .await
        .unwrap_err();
    assert_eq!((error.code, storage.hits("/forbidden")), (error_codes::STAGE_IN_FAILED, 1), "{}", error.diag);

    // Two 503s, then the file: the third try succeeds.
    stage_in(dir.path(), &[input("ok", format!("{}/flaky/2", storage.url), adler.clone())], &fast()).await.unwrap();
    assert_eq!(storage.hits("/flaky/2"), 3);
    assert_eq!(std::fs::read(dir.path().join("ok")).unwrap(), CONTENT);

    // Always 503: every try is made, then stage-in fails naming the last answer.
    let started = std::time::Instant::now();
    let error = stage_in(dir.path(), &[input("d", format!("{}/down", storage.url), adler)], &fast()).await.unwrap_err();
    assert_eq!(error.code, error_codes::STAGE_IN_FAILED);
    assert!(error.diag.contains("503") && error.diag.contains("3 tries"), "{}", error.diag);
    assert_eq!(storage.hits("/down"), 3);
    // Backoff: 10 ms then 20 ms at least.
    assert!(started.elapsed() >= Duration::from_millis(30), "{:?}", started.elapsed());
}

#[tokio::test]
async fn an_unreachable_host_is_retried_then_fails_and_file_inputs_get_the_same_checks() {
    let dir = tempfile::tempdir().unwrap();
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let policy = StageInPolicy { attempts: 2, ..fast() };
    let error = stage_in(dir.path(), &[input("u", format!("http://127.0.0.1:{port}/x"), String::new())], &policy)
        .await
        .unwrap_err();
    assert_eq!(error.code, error_codes::STAGE_IN_FAILED);
    assert!(error.diag.contains("2 tries"), "{}", error.diag);

    let source = dir.path().join("source");
    std::fs::write(&source, CONTENT).unwrap();
    let [_, md5, _] = checksums_of(b"different");
    let url = format!("file://{}", source.display());
    let job = tempfile::tempdir().unwrap();
    let error = stage_in(job.path(), &[input("s", url.clone(), md5)], &fast()).await.unwrap_err();
    assert_eq!(error.code, error_codes::GET_MD5_MISMATCH, "{}", error.diag);
    let missing = format!("file://{}/nothing", dir.path().display());
    let error = stage_in(job.path(), &[input("n", missing, String::new())], &fast()).await.unwrap_err();
    assert_eq!(error.code, error_codes::NO_SUCH_FILE, "{}", error.diag);
    let error = stage_in(job.path(), &[input("r", "root://eos/x".into(), String::new())], &fast()).await.unwrap_err();
    assert!(error.diag.contains("http(s)://"), "{}", error.diag);
}
