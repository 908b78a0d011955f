//! HTTP-level tests of the whole API, one binary (`cargo test --test api`).

mod helpers;

mod bad_input;
mod client_input;
mod connect_flow;
mod crm_meta;
mod filter_index;
mod fuzz;
mod integrations;
mod link_v1;
mod oauth;
mod objects_apart;
mod openapi;
mod pages;
mod providers;
mod proxy;
mod ssrf;
mod sync;
mod tenancy;
mod vault;
mod vessel_files;
mod webhooks;
