//! Prints the REST API's OpenAPI document, exactly as `GET /api/v1/openapi.json` serves it, so
//! that tools can check it without starting a hub: `scripts/test` runs
//! `cargo run -p iothub-hub --example openapi > target/openapi.json` and a standard validator
//! (`openapi-spec-validator`) over the file.

use utoipa::OpenApi as _;

fn main() -> anyhow::Result<()> {
    let doc = iothub_hub::api::system::ApiDoc::openapi().to_pretty_json()?;
    println!("{doc}");
    Ok(())
}
