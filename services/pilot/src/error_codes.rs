//! Pilot error codes sent with a failed job, numbered as in the reference pilot so that
//! dashboards and retry rules that know those numbers keep working.

/// Unclassified pilot failure (GENERALERROR).
pub const GENERAL: u32 = 1008;
/// Not enough local disk (NOLOCALSPACE).
pub const NO_LOCAL_SPACE: u32 = 1098;
/// An input could not be staged in, or did not match its size or checksum (STAGEINFAILED).
pub const STAGE_IN_FAILED: u32 = 1099;
/// An input's URL names no file: 404 or 410 over http(s), no such file for file:// (NOSUCHFILE).
pub const NO_SUCH_FILE: u32 = 1103;
/// The job's work directory could not be set up (SETUPFAILURE).
pub const SETUP_FAILURE: u32 = 1110;
/// An output could not be staged out (STAGEOUTFAILED).
pub const STAGE_OUT_FAILED: u32 = 1137;
/// Killed on the server's instruction (PANDAKILL).
pub const PANDA_KILL: u32 = 1144;
/// An input's md5 or sha256 checksum did not match the catalog's (GETMD5MISMATCH).
pub const GET_MD5_MISMATCH: u32 = 1145;
/// An input download kept timing out until its tries ran out (STAGEINTIMEOUT).
pub const STAGE_IN_TIMEOUT: u32 = 1151;
/// The payload exited 0 without writing an expected output (MISSINGOUTPUTFILE).
pub const MISSING_OUTPUT: u32 = 1165;
/// An input's adler32 checksum did not match the catalog's (GETADMISMATCH).
pub const GET_ADLER32_MISMATCH: u32 = 1171;
/// The pilot was told to stop (SIGTERM or Ctrl-C) while it held the job (SIGTERM).
pub const SIGTERM: u32 = 1201;
/// The payload ran past the job's wall-time limit and was killed (REACHEDMAXTIME).
pub const REACHED_MAX_TIME: u32 = 1213;
/// The payload's resident memory exceeded the job's memory limit and it was killed
/// (PAYLOADEXCEEDMAXMEM).
pub const PAYLOAD_EXCEEDED_MAX_MEM: u32 = 1235;
/// The payload could not be started, exited non-zero or died of a signal
/// (PAYLOADEXECUTIONFAILURE).
pub const PAYLOAD_FAILED: u32 = 1305;
/// The job's container image cannot be used: the runtime could not pull, open or start it, or
/// does not take its form (IMAGENOTFOUND).
pub const IMAGE_NOT_FOUND: u32 = 1360;
/// A job has a container image and no container runtime can be found on the node
/// (APPTAINERNOTINSTALLED, used for every runtime).
pub const CONTAINER_RUNTIME_NOT_INSTALLED: u32 = 1372;
