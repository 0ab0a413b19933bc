//! The client side of the CLI's commands that talk to a running gateway (`usage`, `cache
//! purge`): one connection (TLS when asked), the caller's bearer token on each request.

use std::time::Duration;

use tonic::transport::Channel;

use crate::pb;
use crate::pb::gateway_service_client::GatewayServiceClient;
use crate::server::{self, ClientTls};

type Error = Box<dyn std::error::Error>;

/// A client of the gateway at `addr`.
async fn client(
    addr: &str,
    tls: Option<&ClientTls>,
) -> Result<GatewayServiceClient<Channel>, Error> {
    let channel = server::connect(addr, tls, Duration::from_secs(10)).await?;
    Ok(GatewayServiceClient::new(channel))
}

/// `message` with `authorization: Bearer <token>` when a token is given.
fn authorized<T>(message: T, token: Option<&str>) -> Result<tonic::Request<T>, Error> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = token {
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| "the token is not a valid header value")?;
        request.metadata_mut().insert("authorization", value);
    }
    Ok(request)
}

fn status(s: tonic::Status) -> Error {
    format!("{:?}: {}", s.code(), s.message()).into()
}

/// A report's usage (`GetReportUsage`), for `vra-gateway usage`.
pub async fn report_usage(
    addr: &str,
    tls: Option<&ClientTls>,
    token: Option<&str>,
    report_id: &str,
) -> Result<pb::GetReportUsageResponse, Error> {
    let request = authorized(
        pb::GetReportUsageRequest {
            report_id: report_id.to_string(),
        },
        token,
    )?;
    let response = client(addr, tls).await?.get_report_usage(request).await;
    Ok(response.map_err(status)?.into_inner())
}

/// Drops `client`'s cached answers (`None`: every answer) through `PurgeCache`, for
/// `vra-gateway cache purge`; how many were dropped.
pub async fn purge_cache(
    addr: &str,
    tls: Option<&ClientTls>,
    token: Option<&str>,
    client_id: Option<String>,
) -> Result<u64, Error> {
    let request = authorized(pb::PurgeCacheRequest { client_id }, token)?;
    let response = client(addr, tls).await?.purge_cache(request).await;
    Ok(response.map_err(status)?.into_inner().purged)
}
