//! Serves a provider fake on loopback, to try Berth's connectors by hand:
//! `cargo run -p berth-fakes --bin berth-fake -- hubspot` (or `salesforce`).
//! Prints the base URL and what to put in Berth's providers file.
#![forbid(unsafe_code)]

use berth_fakes::{hubspot, salesforce};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let which = std::env::args().nth(1).unwrap_or_default();
    match which.as_str() {
        "hubspot" => {
            let hs = hubspot::HubSpot::new(hubspot::Options::default());
            let base = berth_fakes::serve(hs.router()).await?;
            println!("HubSpot fake on {base}; private-app token: pat-na1-test");
            println!("providers file:\n[integrations.hubspot]\nbase_url = \"{base}\"");
        }
        "salesforce" => {
            let sf = salesforce::Salesforce::new(salesforce::Options::default());
            let base = sf.serve().await?;
            println!("Salesforce fake on {base}; OAuth client id sf-client, secret sf-secret");
            println!(
                "providers file:\n[integrations.salesforce.auth.oauth2]\nauthorize_url = \"{base}/services/oauth2/authorize\"\ntoken_url = \"{base}/services/oauth2/token\""
            );
        }
        _ => {
            eprintln!("usage: berth-fake hubspot|salesforce");
            std::process::exit(2);
        }
    }
    tokio::signal::ctrl_c().await
}
