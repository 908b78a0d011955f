//! Berth's unified models: what a CRM contact, deal, account… is, whatever
//! the provider, and how it is shown in each API generation.
//!
//! Records are stored in one canonical form (v1 field names, associations
//! as native ids under `associations`); [`crm::render_v1`] and
//! [`crm::render_v2`] turn it into the wire shapes, and [`filter`] evaluates
//! the Prisma-style filters of v1 search and v2 list on the rendered form,
//! so a field is filtered by the name the caller sees.
#![forbid(unsafe_code)]

pub mod crm;
pub mod filter;

pub use filter::{Filter, FilterError};
