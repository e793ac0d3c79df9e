use panda_proto::common::v1::JobStatus as WireJobStatus;

use super::*;

fn link() -> ServerLink {
    ServerLink::new("http://127.0.0.1:9", "node-1".to_owned(), Duration::from_secs(60)).unwrap()
}

#[test]
fn backoff_doubles_up_to_the_cap() {
    let delays: Vec<_> = (0..8).map(backoff).collect();
    assert_eq!(delays[0], MIN_RETRY_DELAY);
    assert_eq!(delays[1], MIN_RETRY_DELAY * 2);
    assert!(delays.windows(2).all(|pair| pair[0] <= pair[1]), "{delays:?}");
    assert_eq!(backoff(7), MAX_RETRY_DELAY);
    assert_eq!(backoff(u32::MAX), MAX_RETRY_DELAY);
}

#[tokio::test]
async fn updates_carry_the_lease_node_and_outputs() {
    let lease = Lease { job_id: JobId(42), token: "lease-abc".to_owned() };
    let update = Update {
        exit_code: Some(0),
        output_files: vec![StagedOutput {
            lfn: "out.txt".to_owned(),
            size_bytes: 5,
            checksum: "adler32:05c801f1".to_owned(),
        }],
        ..Update::status(JobStatus::Finished)
    };
    let request = link().request(&lease, &update);
    assert_eq!(request.job_id, 42);
    assert_eq!(request.lease_token, "lease-abc");
    assert_eq!(request.status, WireJobStatus::Finished as i32);
    assert_eq!(request.node, "node-1");
    assert_eq!(request.exit_code, Some(0));
    assert_eq!(
        request.output_files,
        vec![OutputFile { lfn: "out.txt".to_owned(), size_bytes: 5, checksum: "adler32:05c801f1".to_owned() }]
    );
}

#[tokio::test]
async fn replies_are_classified() {
    let mut link = link();
    let reply = |command: PilotCommand| Ok(UpdateJobResponse { command: command as i32, status: 0 });
    assert!(matches!(link.classify(reply(PilotCommand::None)), Attempt::Accepted { kill: false }));
    assert!(matches!(link.classify(reply(PilotCommand::Unspecified)), Attempt::Accepted { kill: false }));
    assert!(matches!(link.classify(reply(PilotCommand::Kill)), Attempt::Accepted { kill: true }));
    assert!(matches!(link.classify(Err(tonic::Status::failed_precondition("lease"))), Attempt::LeaseLost(_)));
    assert!(matches!(link.classify(Err(tonic::Status::not_found("job"))), Attempt::LeaseLost(_)));
    assert!(matches!(link.classify(Err(tonic::Status::unavailable("down"))), Attempt::Failed(_)));
}

#[tokio::test]
async fn the_deadline_counts_from_the_last_success() {
    let mut link = ServerLink::new("http://127.0.0.1:9", "n".to_owned(), Duration::ZERO).unwrap();
    let down = tonic::Status::unavailable("down");
    assert!(matches!(link.check_deadline(&down), Err(Error::ServerUnreachable { .. })));
    link.server_deadline = Duration::from_secs(3600);
    link.check_deadline(&down).unwrap();
}
