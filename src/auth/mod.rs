//! Who may call what: the roles, the RPCs each one may call, and the
//! clients a credentials file names (each with the SHA-256 of its bearer
//! token and its roles). Knows nothing of the wire: the gRPC edge reads the
//! token and the method, and asks here.

mod credentials;
mod roles;

pub use credentials::{Client, Credentials};
pub use roles::{ROUTING_SERVICE, Role, role_of};
