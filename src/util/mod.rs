//! The bottom layer: small pure helpers every other layer may use (addresses, hex, Go
//! durations, error text, secrets). Imports nothing from the crate.

pub mod addr;
pub mod errtext;
pub mod goduration;
pub mod hex;
pub mod mac;
pub mod secret;

/// `impl From<Source> for Error` as `Error::Internal(source.to_string())`, for the faults that
/// are this agent's own (a state file it cannot read, a worker task that died): the text is
/// kept, the kind is `Internal`.
macro_rules! internal_from {
    ($error:ident: $($source:ty),+ $(,)?) => {
        $(
            impl From<$source> for $error {
                fn from(e: $source) -> Self {
                    $error::Internal(e.to_string())
                }
            }
        )+
    };
}
pub(crate) use internal_from;
