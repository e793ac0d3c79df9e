//! CacheService: decodes the upload stream into header and chunks for `crate::cache`, and streams
//! archives back.

use panda_proto::convert::timestamp;
use panda_proto::server::v1 as wire;
use panda_proto::server::v1::cache_service_server::CacheService;
use panda_proto::server::v1::upload_archive_request::Part;
use tokio::io::AsyncReadExt;
use tonic::{Request, Response, Status, Streaming};

use crate::cache::{Cache, UploadHeader, UploadStart};
use crate::store::ArchiveRecord;

/// Bytes per download message.
const DOWNLOAD_CHUNK: usize = 1024 * 1024;

/// Serves CacheService.
#[derive(Debug, Clone)]
pub struct CacheApi {
    cache: Cache,
}

impl CacheApi {
    /// An adapter over the cache.
    pub fn new(cache: Cache) -> Self {
        Self { cache }
    }
}

fn info(record: ArchiveRecord) -> wire::ArchiveInfo {
    wire::ArchiveInfo {
        sha256: record.sha256,
        size_bytes: record.size_bytes,
        created_at: Some(timestamp(record.created_at)),
        uploader: record.uploader,
    }
}

#[tonic::async_trait]
impl CacheService for CacheApi {
    type DownloadArchiveStream = tokio_stream::wrappers::ReceiverStream<Result<wire::DownloadArchiveResponse, Status>>;

    async fn stat_archive(
        &self,
        request: Request<wire::StatArchiveRequest>,
    ) -> Result<Response<wire::StatArchiveResponse>, Status> {
        let record = self.cache.stat(&request.into_inner().sha256).await?;
        Ok(Response::new(wire::StatArchiveResponse { archive: record.map(info) }))
    }

    async fn upload_archive(
        &self,
        request: Request<Streaming<wire::UploadArchiveRequest>>,
    ) -> Result<Response<wire::UploadArchiveResponse>, Status> {
        let mut stream = request.into_inner();
        let header = match stream.message().await? {
            Some(wire::UploadArchiveRequest { part: Some(Part::Header(header)) }) => header,
            Some(_) => {
                return Err(Status::invalid_argument("the first message must be the header (sha256, size_bytes)"));
            }
            None => return Err(Status::invalid_argument("empty upload: the first message must be the header")),
        };
        let header = UploadHeader { sha256: header.sha256, size_bytes: header.size_bytes, uploader: header.uploader };
        let mut upload = match self.cache.begin_upload(header).await? {
            // Answered before the client's bytes are read: a duplicate upload costs nothing.
            UploadStart::Exists(record) => {
                return Ok(Response::new(wire::UploadArchiveResponse { archive: Some(info(record)), created: false }));
            }
            UploadStart::Receiving(upload) => upload,
        };
        // Any early return drops `upload`, which removes its temporary file.
        while let Some(message) = stream.message().await? {
            match message.part {
                Some(Part::Chunk(bytes)) => upload.write(&bytes).await?,
                Some(Part::Header(_)) => {
                    return Err(Status::invalid_argument("header sent twice; send it first, once"));
                }
                None => return Err(Status::invalid_argument("part is required (header or chunk)")),
            }
        }
        let (record, created) = upload.finish().await?;
        Ok(Response::new(wire::UploadArchiveResponse { archive: Some(info(record)), created }))
    }

    async fn download_archive(
        &self,
        request: Request<wire::DownloadArchiveRequest>,
    ) -> Result<Response<Self::DownloadArchiveStream>, Status> {
        let sha256 = request.into_inner().sha256;
        let (record, mut file) = self.cache.open_archive(&sha256).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let mut archive = Some(info(record));
            loop {
                let mut chunk = Vec::with_capacity(DOWNLOAD_CHUNK);
                let read = (&mut file).take(DOWNLOAD_CHUNK as u64).read_to_end(&mut chunk).await;
                let message = match read {
                    Ok(0) if archive.is_none() => return,
                    Ok(_) => Ok(wire::DownloadArchiveResponse { archive: archive.take(), chunk }),
                    Err(error) => {
                        tracing::error!(sha256 = %sha256, %error, "cannot read a cached archive");
                        Err(Status::internal(format!("cannot read archive {sha256} from the cache")))
                    }
                };
                let failed = message.is_err();
                if tx.send(message).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }
}
