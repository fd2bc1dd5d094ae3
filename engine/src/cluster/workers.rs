//! The workers a run may use: `--workers`, `TALLY_WORKERS` or `workers = [...]` under
//! `[cluster]` in `tally.toml`.

use crate::error::{Result, TallyError};
use crate::serve::auth::Token;
use datafusion::error::DataFusionError;
use datafusion_distributed::WorkerResolver;
use std::time::Duration;
use url::Url;

/// How long a worker has to accept a connection before a run counts it as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// A fixed list of worker URLs (`http://host:port`) and the token to present to them.
#[derive(Clone, Debug)]
pub struct Workers {
    urls: Vec<Url>,
    token: Token,
}

impl Workers {
    /// Parses `HOST:PORT` or `http://HOST:PORT` entries (a list from a flag is split on commas).
    pub fn parse<S: AsRef<str>>(entries: &[S], token: Token) -> Result<Self> {
        let mut urls = Vec::new();
        for entry in entries
            .iter()
            .flat_map(|e| e.as_ref().split(','))
            .map(str::trim)
            .filter(|e| !e.is_empty())
        {
            let text = if entry.contains("://") {
                entry.to_string()
            } else {
                format!("http://{entry}")
            };
            let url = Url::parse(&text)
                .ok()
                .filter(|u| u.scheme() == "http" && u.host().is_some() && u.port().is_some())
                .ok_or_else(|| TallyError::InvalidArgument {
                    what: "--workers".into(),
                    message: format!("{entry:?} is not HOST:PORT (e.g. 10.0.0.5:7070)"),
                })?;
            if !urls.contains(&url) {
                urls.push(url);
            }
        }
        if urls.is_empty() {
            return Err(TallyError::InvalidArgument {
                what: "--workers".into(),
                message: "no worker given".into(),
            });
        }
        Ok(Self { urls, token })
    }

    /// The workers' URLs.
    pub fn urls(&self) -> &[Url] {
        &self.urls
    }

    /// The token sent to them.
    pub fn token(&self) -> &Token {
        &self.token
    }

    /// The workers that accept a connection now. Those that do not are left out with a
    /// warning; none answering is an error naming them all.
    pub async fn reachable(&self) -> Result<Self> {
        let (up, down) = self.probe().await;
        if up.is_empty() {
            return Err(TallyError::Cluster {
                message: format!("no worker reachable: {}", down.join(", ")),
            });
        }
        for d in &down {
            tracing::warn!(worker = %d, "worker unreachable; running without it");
        }
        Ok(self.only(up))
    }

    /// The workers that accept a connection now, and each one that does not, with why.
    async fn probe(&self) -> (Vec<Url>, Vec<String>) {
        let mut up = Vec::new();
        let mut down = Vec::new();
        for url in &self.urls {
            match connect(url).await {
                Ok(()) => up.push(url.clone()),
                Err(why) => down.push(format!("{} ({why})", authority(url))),
            }
        }
        (up, down)
    }

    fn only(&self, urls: Vec<Url>) -> Self {
        Self {
            urls,
            token: self.token.clone(),
        }
    }
}

impl Workers {
    /// After a failed run: the workers still answering when some stopped (each lost one is
    /// named in a warning), `None` when all still answer (the failure was not a lost worker),
    /// and an error naming them all when none is left.
    pub async fn after_failure(&self) -> Result<Option<Self>> {
        let (up, lost) = self.probe().await;
        if lost.is_empty() {
            return Ok(None);
        }
        if up.is_empty() {
            return Err(TallyError::Cluster {
                message: format!("every worker was lost: {}", lost.join(", ")),
            });
        }
        for l in &lost {
            tracing::warn!(worker = %l, "worker lost; running again on the others");
        }
        Ok(Some(self.only(up)))
    }
}

impl WorkerResolver for Workers {
    fn get_urls(&self) -> std::result::Result<Vec<Url>, DataFusionError> {
        Ok(self.urls.clone())
    }
}

/// `host:port` of a worker URL, as people write it.
pub fn authority(url: &Url) -> String {
    match (url.host_str(), url.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        _ => url.to_string(),
    }
}

async fn connect(url: &Url) -> std::result::Result<(), String> {
    let addr = authority(url);
    match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(&addr)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer in {} s", CONNECT_TIMEOUT.as_secs())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_parse_as_http_urls_and_bad_ones_are_named() {
        let w = Workers::parse(
            &["127.0.0.1:7070, http://h:1", "127.0.0.1:7070"],
            Token::default(),
        )
        .unwrap();
        let urls: Vec<String> = w.urls().iter().map(|u| u.to_string()).collect();
        assert_eq!(urls, ["http://127.0.0.1:7070/", "http://h:1/"]);
        let e = Workers::parse(&["nohost"], Token::default()).unwrap_err();
        assert!(e.to_string().contains("\"nohost\""), "{e}");
        assert!(Workers::parse(&[" , "], Token::default()).is_err());
    }

    #[tokio::test]
    async fn after_a_failure_lost_workers_are_dropped_and_none_left_names_them_all() {
        let listeners: Vec<std::net::TcpListener> = (0..2)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let addrs: Vec<String> = listeners
            .iter()
            .map(|l| l.local_addr().unwrap().to_string())
            .collect();
        let workers = Workers::parse(&addrs, Token::default()).unwrap();
        assert!(
            workers.after_failure().await.unwrap().is_none(),
            "all answer"
        );
        let mut listeners = listeners.into_iter();
        drop(listeners.next());
        let left = workers.after_failure().await.unwrap().unwrap();
        assert_eq!(left.urls().len(), 1);
        assert_eq!(authority(&left.urls()[0]), addrs[1]);
        drop(listeners.next());
        let e = workers.after_failure().await.unwrap_err().to_string();
        assert!(
            e.starts_with("cluster: every worker was lost")
                && e.contains(&addrs[0])
                && e.contains(&addrs[1]),
            "{e}"
        );
    }
}
