//! Integration tests: metad in-process on 127.0.0.1:0, driven by `etcd-client` (and by
//! `etcdctl` when it is installed).

mod cluster;
mod etcdctl;
mod harness;
mod kv;
mod lease;
mod linearizable;
mod multi;
mod restart;
mod table;
mod watch;
