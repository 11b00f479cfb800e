//! The ceiling goldrelay is measured against: an actix-web handler that does
//! the same authentication (bearer token, SHA-256 digests compared in constant
//! time) and the same JSON parsing as goldrelay's ingest, then answers 202
//! and stores nothing. Whatever goldrelay runs slower than this is the price
//! of validating, committing durably and logging.

use actix_web::http::header::AUTHORIZATION;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use clap::Parser;
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use subtle::ConstantTimeEq;

/// Runs the bare handler at `POST /api/webhooks/gold-replies`, with `GET /hc`.
#[derive(Parser)]
#[command(about, long_about = None)]
struct Cli {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8090")]
    listen: SocketAddr,
    /// The bearer token to accept.
    #[arg(long, env = "BARE_TOKEN", hide_env_values = true)]
    token: String,
}

struct Token([u8; 32]);

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let cli = Cli::parse();
    let token = web::Data::new(Token(digest(&cli.token)));
    HttpServer::new(move || {
        App::new()
            .app_data(token.clone())
            .route("/api/webhooks/gold-replies", web::post().to(ingest))
            .route("/hc", web::get().to(HttpResponse::Ok))
    })
    .bind(cli.listen)?
    .run()
    .await
}

async fn ingest(req: HttpRequest, body: web::Bytes, token: web::Data<Token>) -> HttpResponse {
    if !authorized(&req, &token) {
        return HttpResponse::Unauthorized().finish();
    }
    match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(_) => HttpResponse::Accepted().finish(),
        Err(_) => HttpResponse::BadRequest().finish(),
    }
}

fn authorized(req: &HttpRequest, token: &Token) -> bool {
    let presented = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| digest(t.trim()));
    presented.is_some_and(|p| bool::from(token.0.ct_eq(&p)))
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}
