//! Generated protobuf and gRPC types for panda. Modules mirror the proto packages
//! (`panda_proto::server::v1::TaskServiceClient`); domain types live in `panda-types`.

/// `panda.common.v1`: states and resources shared by every service.
pub mod common {
    #[allow(missing_docs, clippy::all, clippy::unwrap_used)]
    pub mod v1 {
        tonic::include_proto!("panda.common.v1");
    }
}
/// `panda.server.v1`: tasks, jobs, pilots, internal calls.
pub mod server {
    #[allow(missing_docs, clippy::all, clippy::unwrap_used)]
    pub mod v1 {
        tonic::include_proto!("panda.server.v1");
    }
}
/// `panda.jedi.v1`.
pub mod jedi {
    #[allow(missing_docs, clippy::all, clippy::unwrap_used)]
    pub mod v1 {
        tonic::include_proto!("panda.jedi.v1");
    }
}
/// `panda.harvester.v1`.
pub mod harvester {
    #[allow(missing_docs, clippy::all, clippy::unwrap_used)]
    pub mod v1 {
        tonic::include_proto!("panda.harvester.v1");
    }
}
/// `panda.idds.v1`.
pub mod idds {
    #[allow(missing_docs, clippy::all, clippy::unwrap_used)]
    pub mod v1 {
        tonic::include_proto!("panda.idds.v1");
    }
}
/// `panda.events.v1`: bus bodies.
pub mod events {
    #[allow(missing_docs, clippy::all, clippy::unwrap_used)]
    pub mod v1 {
        tonic::include_proto!("panda.events.v1");
    }
}

/// Every panda descriptor, for gRPC server reflection (so grpcurl works).
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/panda_descriptor.bin"));

pub mod convert;
