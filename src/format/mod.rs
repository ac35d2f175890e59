//! Pure formats: MicroK8s's args files, kubeconfigs, join connection strings, traefik's
//! provider files, and the :25000 wire types with Go-lenient decoding. Text in, values out;
//! no I/O.

pub mod args;
pub mod bundle;
pub mod connection;
pub mod csr_conf;
pub mod decode;
pub mod kubeconfig;
pub mod labels;
pub mod launch;
pub mod recovery;
pub mod traefik;
pub mod wire;
