//! One Postgres connection: token auth at startup and the CancelRequest handle of its
//! running query.

use super::*;

/// One connection's cancel handle: the token of its running query.
#[derive(Default)]
pub(super) struct ConnectionCancel {
    current: Mutex<CancellationToken>,
}

/// Stored in the connection's session extensions; unregisters the connection when it closes.
pub(super) struct Connection {
    key: (i32, bytes::Bytes),
    cancel: Arc<ConnectionCancel>,
    cancels: Arc<Cancels>,
}

impl Connection {
    /// A fresh token for the next query (a cancel only ever stops the query running now).
    pub(super) fn arm(&self) -> CancellationToken {
        let token = CancellationToken::new();
        if let Ok(mut current) = self.cancel.current.lock() {
            *current = token.clone();
        }
        token
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        if let Ok(mut map) = self.cancels.map.lock() {
            map.remove(&self.key);
        }
    }
}

/// Open connections by (process id, secret key), as CancelRequest names them.
#[derive(Default)]
pub(super) struct Cancels {
    /// Keyed by the secret's bytes: a cancel request arrives on a new connection, which may
    /// decode the same 4-byte key as bytes where the session had an i32.
    map: Mutex<HashMap<(i32, bytes::Bytes), Arc<ConnectionCancel>>>,
}

#[async_trait::async_trait]
impl CancelHandler for Cancels {
    async fn on_cancel_request(&self, request: CancelRequest) {
        let found = self.map.lock().ok().and_then(|m| {
            m.get(&(request.pid, request.secret_key.to_bytes()))
                .cloned()
        });
        if let Some(conn) = found {
            if let Ok(current) = conn.current.lock() {
                current.cancel();
            }
        }
    }
}

/// Trust without a token; with one, a cleartext password that must be the token (any user).
pub(super) struct TokenStartup {
    pub(super) shared: Arc<Shared>,
    pub(super) params: DefaultServerParameterProvider,
    pub(super) pids: RandomPidSecretKeyGenerator,
    pub(super) cancels: Arc<Cancels>,
}

impl TokenStartup {
    async fn accept<C>(&self, client: &mut C) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let (pid, key) = self.pids.generate(&*client);
        client.set_pid_and_secret_key(pid, key.clone());
        let cancel = Arc::new(ConnectionCancel::default());
        if let Ok(mut map) = self.cancels.map.lock() {
            map.insert((pid, key.to_bytes()), Arc::clone(&cancel));
        }
        let connection = Connection {
            key: (pid, key.to_bytes()),
            cancel,
            cancels: Arc::clone(&self.cancels),
        };
        client
            .session_extensions()
            .get_or_insert_with(|| connection);
        finish_authentication(client, &self.params).await
    }
}

#[async_trait::async_trait]
impl StartupHandler for TokenStartup {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        use futures::SinkExt;
        match message {
            PgWireFrontendMessage::Startup(ref startup) => {
                protocol_negotiation(client, startup).await?;
                save_startup_parameters_to_metadata(client, startup);
                if !self.shared.token.is_required() {
                    return self.accept(client).await;
                }
                client.set_state(PgWireConnectionState::AuthenticationInProgress);
                client
                    .send(PgWireBackendMessage::Authentication(
                        Authentication::CleartextPassword,
                    ))
                    .await?;
            }
            PgWireFrontendMessage::PasswordMessageFamily(p) => {
                let password = p.into_password()?;
                if self.shared.token.is_required() && self.shared.token.accepts(&password.password)
                {
                    return self.accept(client).await;
                }
                let user = client
                    .metadata()
                    .get(METADATA_USER)
                    .cloned()
                    .unwrap_or_default();
                return Err(PgWireError::InvalidPassword(user));
            }
            _ => {}
        }
        Ok(())
    }
}
