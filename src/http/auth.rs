//! Bearer-token authentication: the [`Caller`], [`Poster`], [`Reader`] and [`Operator`] extractors. A
//! handler that takes one cannot run for a request without a valid token of
//! a role that may call it, nor past the token's rate.

use super::problem::ApiError;
use super::AppState;
use crate::config::BearerToken;
use actix_web::dev::Payload;
use actix_web::http::header::{HeaderName, AUTHORIZATION};
use actix_web::{web, FromRequest, HttpRequest};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};
use std::future::{ready, Ready};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use subtle::{ConditionallySelectable, ConstantTimeEq};

/// What a token lets its bearer do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Support's tools (`GOLDRELAY_TOKENS`): post gold replies, read one.
    Support,
    /// Operators (`GOLDRELAY_OPERATOR_TOKENS`): everything Support may do, and
    /// list, retry and read `/metrics`.
    Operator,
    /// Read-only (`GOLDRELAY_VIEWER_TOKENS`): the console's data, the list,
    /// one reply and the export; changes nothing.
    Viewer,
}

impl Role {
    /// Every role; a new one is added here and to the enum.
    const ALL: [Role; 3] = [Role::Support, Role::Operator, Role::Viewer];

    /// A non-zero code, so 0 can mean "no token matched" in constant-time selection.
    fn code(self) -> u8 {
        self as u8 + 1
    }

    fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|role| role.code() == code)
    }

    /// The role's name, as `required_role` and `openapi.json`'s security schemes spell it.
    pub fn name(self) -> &'static str {
        match self {
            Role::Support => "support",
            Role::Operator => "operator",
            Role::Viewer => "viewer",
        }
    }
}

/// The roles an extractor lets through: named once, for its own check and
/// for its routes' rows in [`super::ROUTES`].
pub trait Admits {
    const ROLES: &'static [Role];
}

impl Admits for Caller {
    const ROLES: &'static [Role] = &[Role::Support, Role::Viewer, Role::Operator];
}

impl Admits for Poster {
    const ROLES: &'static [Role] = &[Role::Support, Role::Operator];
}

impl Admits for Reader {
    const ROLES: &'static [Role] = &[Role::Viewer, Role::Operator];
}

impl Admits for Operator {
    const ROLES: &'static [Role] = &[Role::Operator];
}

/// An authenticated request's caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    /// What the presented token grants.
    pub role: Role,
    /// Which accounts the token reaches.
    pub scope: Scope,
}

/// The Chatwoot accounts a token reaches: one when it is bound
/// (`<account_id>:<token>`), every one otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Scope(Option<i64>);

impl Scope {
    /// A token bound to `account`.
    pub fn bound(account: i64) -> Self {
        Self(Some(account))
    }

    /// The one account the token reaches, if it is bound.
    pub fn account(self) -> Option<i64> {
        self.0
    }

    /// Whether a reply of `account` is within reach.
    pub fn sees(self, account: i64) -> bool {
        self.0.is_none_or(|bound| bound == account)
    }

    /// `Ok` when `account` is within reach; 403 `account-forbidden` otherwise.
    pub fn require(self, account: i64) -> Result<(), ApiError> {
        match self.0 {
            Some(bound) if bound != account => Err(ApiError::AccountForbidden { bound, account }),
            _ => Ok(()),
        }
    }

    /// The account a listing is narrowed to: the one asked for, which must be
    /// within reach, or else the bound account.
    pub fn narrow(self, asked: Option<i64>) -> Result<Option<i64>, ApiError> {
        match asked {
            Some(account) => self.require(account).map(|()| Some(account)),
            None => Ok(self.0),
        }
    }
}

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(authenticate(req))
    }
}

fn authenticate(req: &HttpRequest) -> Result<Caller, ApiError> {
    match req.app_data::<web::Data<AppState>>() {
        Some(state) => state.tokens.caller(req),
        None => {
            // Fail closed: an app built without state authenticates no one.
            tracing::error!("no AppState registered; refusing the request");
            Err(ApiError::Unauthorized)
        }
    }
}

/// An authenticated caller with the operator role: list, retry, `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Operator;

impl FromRequest for Operator {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(operator(req))
    }
}

fn operator(req: &HttpRequest) -> Result<Operator, ApiError> {
    let configured = req
        .app_data::<web::Data<AppState>>()
        .is_some_and(|state| state.tokens.has(Role::Operator));
    // Said before authenticating: no token could open these endpoints anyway.
    if !configured {
        return Err(ApiError::NoOperators);
    }
    let caller = authenticate(req)?;
    if !Operator::ROLES.contains(&caller.role) {
        return Err(ApiError::RoleRequired("operator"));
    }
    Ok(Operator)
}

/// An authenticated caller who may post gold replies: Support or an operator.
/// A viewer's token is the one in the Dashboard App URL that every agent can
/// read, so it must never reach a customer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Poster(pub Scope);

impl FromRequest for Poster {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(poster(req))
    }
}

fn poster(req: &HttpRequest) -> Result<Poster, ApiError> {
    let caller = authenticate(req)?;
    if !Poster::ROLES.contains(&caller.role) {
        return Err(ApiError::RoleRequired("support or operator"));
    }
    Ok(Poster(caller.scope))
}

/// An authenticated caller who may read every reply: a viewer or an operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reader(pub Scope);

impl FromRequest for Reader {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(reader(req))
    }
}

fn reader(req: &HttpRequest) -> Result<Reader, ApiError> {
    let state = req.app_data::<web::Data<AppState>>();
    let viewers = state.is_some_and(|state| state.tokens.has(Role::Viewer));
    let operators = state.is_some_and(|state| state.tokens.has(Role::Operator));
    if !viewers && !operators {
        return Err(ApiError::NoOperators);
    }
    // Names only the roles a token could have here, so the refusal says what to ask for.
    let required = if viewers {
        "viewer or operator"
    } else {
        "operator"
    };
    let caller = authenticate(req)?;
    if !Reader::ROLES.contains(&caller.role) {
        return Err(ApiError::RoleRequired(required));
    }
    Ok(Reader(caller.scope))
}

/// The accepted tokens, the role each grants and the account each is bound
/// to (0: none; Chatwoot's account ids start at 1), kept only as SHA-256
/// digests: comparing digests in constant time reveals neither a token nor its length.
#[derive(Clone, Default)]
pub struct BearerTokens {
    known: Vec<([u8; 32], Role, i64)>,
    /// The request budgets (`GOLDRELAY_TOKEN_RATE`), when capped.
    rate: Option<Arc<Budgets>>,
    /// `GOLDRELAY_CLIENT_IP_HEADER`: the header a trusted proxy puts the
    /// client's address in; `None`: the TCP peer is the client.
    client_header: Option<HeaderName>,
}

/// Whose budget a request spends: the token's, and for a viewer token the
/// client address's too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct RateKey {
    token: [u8; 32],
    client: Option<IpAddr>,
}

/// One budget per [`RateKey`], pruned every [`PRUNE_EVERY`] checks.
///
/// The bound: only a request with an accepted token reaches the limiter, so
/// a caller without one adds no key; a viewer token adds one key per client
/// address (per IPv6 /64) it is really sent from. Pruning drops every key
/// whose budget has refilled (idle for about a second at most), so the map
/// holds the keys spent from within about the last second plus at most
/// [`PRUNE_EVERY`] new ones.
struct Budgets {
    limiter: DefaultKeyedRateLimiter<RateKey>,
    checks: AtomicU32,
}

/// How many checks pass between two prunings of [`Budgets`]: rare enough
/// that pruning (one pass over the map) costs nothing per request.
const PRUNE_EVERY: u32 = 1024;

impl Budgets {
    fn new(per_second: NonZeroU32) -> Self {
        Self {
            limiter: RateLimiter::keyed(Quota::per_second(per_second)),
            checks: AtomicU32::new(0),
        }
    }

    fn check(&self, key: &RateKey) -> Result<(), ApiError> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % PRUNE_EVERY == PRUNE_EVERY - 1 {
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
        }
        self.limiter.check_key(key).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            ApiError::TooManyRequests {
                wait: wait.max(Duration::from_secs(1)),
                per_client: key.client.is_some(),
            }
        })
    }
}

impl BearerTokens {
    /// Support tokens (`GOLDRELAY_TOKENS`).
    pub fn new(support: &[BearerToken]) -> Self {
        Self::default().grant(Role::Support, support)
    }

    /// Adds `tokens`, each granting `role` within its account, if bound.
    pub fn grant(mut self, role: Role, tokens: &[BearerToken]) -> Self {
        let digests = tokens.iter().map(|t| {
            let account = t.account.unwrap_or(0);
            (digest(t.secret.expose_secret()), role, account)
        });
        self.known.extend(digests);
        self
    }

    /// Caps requests at `per_second` (`GOLDRELAY_TOKEN_RATE`); 0 lifts the
    /// cap. A Support or operator token has one budget wherever it is sent
    /// from; a viewer token has one per client address, because it is the
    /// Dashboard App's, shared by every agent of a team, each in their own
    /// browser.
    pub fn limit_rate(mut self, per_second: u32) -> Self {
        self.rate = NonZeroU32::new(per_second).map(|n| Arc::new(Budgets::new(n)));
        self
    }

    /// Takes a viewer's client address from the header `name`
    /// (`GOLDRELAY_CLIENT_IP_HEADER`) instead of the TCP peer. Only for a
    /// proxy that sets that header itself on every request, such as Fly's
    /// `Fly-Client-IP`: anyone else can write any address there, and with it
    /// a fresh budget per request. An invalid name is ignored.
    pub fn client_address_header(mut self, name: Option<&str>) -> Self {
        self.client_header = name.and_then(|name| HeaderName::from_bytes(name.as_bytes()).ok());
        self
    }

    /// Whether any token grants `role`.
    pub fn has(&self, role: Role) -> bool {
        self.known.iter().any(|(_, r, _)| *r == role)
    }

    /// The caller of `Authorization: Bearer <token>` when the token is one of
    /// ours and within its rate.
    pub fn caller(&self, req: &HttpRequest) -> Result<Caller, ApiError> {
        let presented = bearer(req).ok_or(ApiError::Unauthorized)?;
        let presented = digest(presented);
        // Check every token so timing does not tell which one matched.
        let (matched, account) =
            self.known
                .iter()
                .fold((0u8, 0i64), |(found, bound), (known, role, account)| {
                    let same = known.ct_eq(&presented);
                    (
                        u8::conditional_select(&found, &role.code(), same),
                        i64::conditional_select(&bound, account, same),
                    )
                });
        let role = Role::from_code(matched).ok_or(ApiError::Unauthorized)?;
        self.within_rate(req, presented, role)?;
        let scope = Scope((account != 0).then_some(account));
        Ok(Caller { role, scope })
    }

    fn within_rate(&self, req: &HttpRequest, token: [u8; 32], role: Role) -> Result<(), ApiError> {
        let Some(budgets) = &self.rate else {
            return Ok(());
        };
        let client = match role {
            Role::Viewer => self.client_address(req),
            Role::Support | Role::Operator => None,
        };
        budgets.check(&RateKey { token, client })
    }

    /// The address the request came from: the trusted header's when it holds
    /// one, else the TCP peer's.
    fn client_address(&self, req: &HttpRequest) -> Option<IpAddr> {
        let told = self
            .client_header
            .as_ref()
            .and_then(|name| told_address(req, name));
        told.or_else(|| req.peer_addr().map(|peer| peer.ip()))
            .map(one_client)
    }
}

/// The address in the last `name` header, which the nearest proxy wrote. In
/// a list (`X-Forwarded-For`) only the last entry is the proxy's own word;
/// the ones before it are whatever the client sent.
fn told_address(req: &HttpRequest, name: &HeaderName) -> Option<IpAddr> {
    let value = req.headers().get_all(name).last()?.to_str().ok()?;
    let last = value.rsplit(',').next()?.trim();
    last.parse::<IpAddr>()
        .ok()
        .or_else(|| last.parse::<SocketAddr>().ok().map(|at| at.ip()))
}

/// An address as one client: an IPv4 address, or an IPv6 /64, which one
/// household or host usually holds whole (so it cannot mint budgets by
/// changing the low bits).
fn one_client(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let [a, b, c, d, ..] = v6.segments();
            IpAddr::V6(Ipv6Addr::new(a, b, c, d, 0, 0, 0, 0))
        }
        v4 @ IpAddr::V4(_) => v4,
    }
}

/// The token of a well-formed `Authorization: Bearer <token>` header.
fn bearer(req: &HttpRequest) -> Option<&str> {
    let value = req.headers().get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

#[cfg(test)]
mod tests;
