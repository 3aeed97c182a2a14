//! Who may call what: the roles, the RPCs each one may call, and the
//! clients a credentials file names (each with the SHA-256 of its bearer
//! token or a name its client certificate carries, and its roles). Knows
//! nothing of the wire: the gRPC edge reads the token, the certificate's
//! names and the method, and asks here.

mod credentials;
mod roles;

pub use credentials::{Client, Credentials};
pub use roles::{ROUTING_SERVICE, Role, role_of};

/// The credentials in force, swapped whole when the file changes.
pub type SharedCredentials = std::sync::Arc<arc_swap::ArcSwap<Credentials>>;
