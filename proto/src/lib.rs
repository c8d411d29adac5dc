//! Code generated from the `.proto` files in this crate (into `OUT_DIR`).

#![allow(clippy::all, clippy::pedantic, missing_docs)]

pub mod blob {
    pub mod v1 {
        tonic::include_proto!("blob.v1");
    }
}

/// metad's peer protocol (Raft RPCs and requests forwarded to the leader).
pub mod raft {
    pub mod v1 {
        tonic::include_proto!("raft.v1");
    }
}

/// etcd v3's server-side API (vendored protos, unchanged), used by metad.
pub mod etcd {
    pub mod mvccpb {
        tonic::include_proto!("mvccpb");
    }
    pub mod authpb {
        tonic::include_proto!("authpb");
    }
    pub mod etcdserverpb {
        tonic::include_proto!("etcdserverpb");
    }
}
