//! The admin's side: the appliance (executing command lines), rendering in NetScaler's form,
//! the console (rustyline), the control socket and its `nsemu cli` client.

pub mod appliance;
pub mod render;
pub mod time;

pub use appliance::{Appliance, Paths, Reply};
pub mod console;
pub mod control;
