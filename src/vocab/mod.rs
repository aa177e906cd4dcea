//! The vocabulary both sides of the bridge share: what connectors declare and hand over, and what
//! the router, store and outbox read. A leaf: it imports only [`crate::model`] and
//! [`crate::richtext`], so every other module may import it and imports run one way
//! (connectors → vocabulary ← router, outbox, store).
//!
//! - [`delivery`]: handing a delivery to a connection and its acknowledgement (`Endpoint`,
//!   `AckFuture`, `DeliveryError`), and telling the outbox of new rows (`Wake`).
//! - [`capabilities`]: what a network declares about itself (`Capabilities`, `CaseMapping`).
//! - [`gateway`]: gateways as data (`GatewayConfig`, `Direction`) and their delivery settings.
//! - [`people`]: the people directory (who is shown under which name), for mentions.
//! - [`identities`]: one person's accounts linked across networks (`[[identity]]`).
//! - [`section`]: the validation of one `[network.X]` section, with located issues.
//! - [`stages`]: the latency histograms each stage of the bridge observes.
//! - [`network_metrics`]: the series a connector keeps about its own network, for `/metrics`.
//! - [`status`]: what each connector reports of its connection and channels, for `/readyz`.
//! - [`lease`]: this instance's role between instances sharing one PostgreSQL store (the
//!   lease's fencing token, whether it may send), and the endpoint that gates sending on it.

pub mod capabilities;
pub mod delivery;
pub mod gateway;
pub mod identities;
pub mod lease;
pub mod network_metrics;
pub mod people;
pub mod section;
pub mod stages;
pub mod status;

pub use capabilities::{Capabilities, CaseMapping};
pub use delivery::{AckFuture, DeliveryError, Endpoint, PendingDelivery, Wake};
pub use gateway::{
    DEFAULT_ORIGINAL_TIME_AFTER, Direction, GatewayBook, GatewayChannel, GatewayConfig,
    GatewaySettings,
};
pub use identities::{Identities, Identity};
pub use lease::{Fenced, Lease, Role, RoleView};
pub use people::{KnownPerson, People};
pub use section::{Secret, Section, SectionIssue};
pub use status::{NetworkStatus, Status};
