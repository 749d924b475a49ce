//! The session pool: one `C_Initialize` per process, a bounded set of logged-in
//! sessions shared by every thread, and recovery from lost sessions, lost
//! logins and a token that went away.
//!
//! A session is leased for one operation and returned. When an operation
//! fails with a PKCS#11 code that means "this session is gone" the session is
//! dropped and the operation retried on another; "the login is gone" logs in
//! again; "the token is gone" empties the pool, finds the token again by
//! label (it may come back in another slot) and retries after a pause. A
//! rejected PIN is never retried: tokens lock the PIN after a few failures.
//!
//! Each pooled session carries the session-object copies of token keys made
//! in it (see `Token::signing_key`); they live and die with the session.

use std::collections::HashMap;
use std::ops::Deref;
use std::path::PathBuf;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Function, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::object::ObjectHandle;
use cryptoki::session::{Session, SessionState, UserType};
use cryptoki::slot::Slot;
use secrecy::SecretString;

use crate::error::{fn_name, rv_name, Error, Result};

/// What a failed PKCS#11 call says about the session it ran on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// The session is gone; drop it and retry on another.
    Session,
    /// The login is gone; log in again and retry.
    Login,
    /// The token (or the library's view of it) is gone; rebuild the pool.
    Token,
    /// A cached object handle is stale; forget cached handles and retry.
    Handle,
    /// The operation itself failed; retrying would not help.
    Final,
}

fn classify(rv: RvError) -> Fault {
    match rv {
        RvError::SessionHandleInvalid | RvError::SessionClosed => Fault::Session,
        RvError::UserNotLoggedIn => Fault::Login,
        RvError::DeviceRemoved
        | RvError::DeviceError
        | RvError::TokenNotPresent
        | RvError::TokenNotRecognized
        | RvError::SlotIdInvalid
        | RvError::CryptokiNotInitialized => Fault::Token,
        RvError::ObjectHandleInvalid | RvError::KeyHandleInvalid => Fault::Handle,
        _ => Fault::Final,
    }
}

/// Whether the pool recovers from `rv` (a lost session, login, token or
/// object handle) rather than report it.
pub(crate) fn recoverable(rv: RvError) -> bool {
    classify(rv) != Fault::Final
}

fn is_pin_rejection(rv: RvError) -> bool {
    matches!(
        rv,
        RvError::PinIncorrect
            | RvError::PinInvalid
            | RvError::PinLenRange
            | RvError::PinLocked
            | RvError::PinExpired
            | RvError::UserPinNotInitialized
    )
}

/// Turn a cryptoki error into ours, keeping the function and return value.
pub(crate) fn ck(e: CkError) -> Error {
    match e {
        CkError::Pkcs11(rv, function) => Error::Pkcs11 { function, rv },
        other => Error::TokenProtocol(other.to_string()),
    }
}

/// Pool settings taken from the configuration.
pub(crate) struct PoolSettings {
    pub label: String,
    pub module: PathBuf,
    pub size: usize,
    pub retries: u32,
    pub backoff: Duration,
    pub acquire_timeout: Duration,
}

struct State {
    /// Slot of our token, `None` until found again after a token fault.
    slot: Option<Slot>,
    /// Bumped each time the pool is rebuilt; sessions of older generations
    /// are not returned to it.
    generation: u64,
    /// Bumped each time the library is initialised again after something
    /// finalised it under us; sessions of older epochs are forgotten, never
    /// closed (their handle numbers may now belong to new sessions).
    epoch: u64,
    idle: Vec<PooledSession>,
    /// Sessions open in this generation: idle plus leased.
    open: usize,
    /// Set once the token refused our PIN; every later call fails fast.
    pin_rejected: Option<RvError>,
}

pub(crate) struct Pool {
    pkcs11: Pkcs11,
    pin: SecretString,
    cfg: PoolSettings,
    state: Mutex<State>,
    freed: Condvar,
}

/// A logged-in session of the pool, with the session-object copies of token
/// keys made in it. Dereferences to the session.
pub(crate) struct PooledSession {
    session: Session,
    /// Session copies of token private keys, by label.
    copies: HashMap<String, SessionCopy>,
}

/// A session-object copy of a token key, made in one session.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SessionCopy {
    /// The handle-cache lookup of the token key it was copied from: the copy
    /// is used only while that lookup is the cached one.
    pub lookup: u64,
    /// The copy.
    pub handle: ObjectHandle,
}

impl PooledSession {
    fn new(session: Session) -> Self {
        Self {
            session,
            copies: HashMap::new(),
        }
    }

    /// The session copies made in this session, by key label.
    #[cfg(test)]
    pub(crate) fn copies(&self) -> &HashMap<String, SessionCopy> {
        &self.copies
    }

    /// The session and its copies, borrowed apart.
    pub(crate) fn split(&mut self) -> (&Session, &mut HashMap<String, SessionCopy>) {
        (&self.session, &mut self.copies)
    }
}

impl Deref for PooledSession {
    type Target = Session;

    fn deref(&self) -> &Session {
        &self.session
    }
}

/// A session borrowed from the pool for one operation.
pub(crate) struct Lease<'a> {
    pool: &'a Pool,
    session: Option<PooledSession>,
    generation: u64,
    epoch: u64,
}

impl Lease<'_> {
    pub(crate) fn session(&mut self) -> Result<&mut PooledSession> {
        self.session
            .as_mut()
            .ok_or(Error::Unreachable("lease used after release"))
    }

    /// Give the session back without returning it to the pool.
    fn discard(mut self) {
        if let Some(s) = self.session.take() {
            self.pool.release(s, self.generation, self.epoch, false);
        }
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            self.pool.release(s, self.generation, self.epoch, true);
        }
    }
}

impl Pool {
    /// Load the module, initialise it once, find the token and log in.
    pub(crate) fn open(pkcs11: Pkcs11, pin: SecretString, cfg: PoolSettings) -> Result<Self> {
        initialize(&pkcs11)?;
        let pool = Pool {
            pkcs11,
            pin,
            cfg,
            state: Mutex::new(State {
                slot: None,
                generation: 0,
                epoch: 0,
                idle: Vec::new(),
                open: 0,
                pin_rejected: None,
            }),
            freed: Condvar::new(),
        };
        // Fail at start, with the precise reason, if the token is absent or
        // the PIN wrong; the lease goes straight back into the pool.
        drop(pool.acquire()?);
        Ok(pool)
    }

    pub(crate) fn pkcs11(&self) -> &Pkcs11 {
        &self.pkcs11
    }

    pub(crate) fn label(&self) -> &str {
        &self.cfg.label
    }

    /// The slot the token is in now, finding it if needed.
    pub(crate) fn slot(&self) -> Result<Slot> {
        if let Some(slot) = self.lock().slot {
            return Ok(slot);
        }
        let slot = self.find_slot()?;
        self.lock().slot.get_or_insert(slot);
        Ok(slot)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave State inconsistent in
        // a way that matters more than refusing service; recover the guard.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Run `op` on a pooled session, recovering from lost sessions, logins and
    /// tokens with bounded retries.
    ///
    /// `op` may run more than once, so it must not have effects outside the
    /// token that a retry would repeat. `on_stale_handles` is called when a
    /// cached object handle turned out to be stale, or may have: after a lost
    /// login, as PKCS#11 invalidates handles to private objects on logout and
    /// destroys private session objects.
    pub(crate) fn run<T>(
        &self,
        mut op: impl FnMut(&mut PooledSession) -> Result<T>,
        on_stale_handles: impl Fn(),
    ) -> Result<T> {
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            let failure = match self.acquire() {
                Ok(mut lease) => match op(lease.session()?) {
                    Ok(v) => return Ok(v),
                    Err(Error::Pkcs11 { function, rv }) => {
                        let fault = classify(rv);
                        match fault {
                            Fault::Final => return Err(Error::Pkcs11 { function, rv }),
                            Fault::Session => {
                                // One dead session usually means all of them
                                // died (C_CloseAllSessions, a token reset):
                                // drop the idle ones too rather than burn a
                                // retry on each.
                                let (generation, epoch) = (lease.generation, lease.epoch);
                                lease.discard();
                                self.rebuild(generation, epoch, rv, false);
                            }
                            Fault::Login => {
                                // Login is per application: one login on this
                                // session restores every pooled session.
                                self.login(lease.session()?)?;
                                on_stale_handles();
                            }
                            Fault::Token => {
                                let (generation, epoch) = (lease.generation, lease.epoch);
                                lease.discard();
                                self.rebuild(generation, epoch, rv, true);
                                on_stale_handles();
                            }
                            Fault::Handle => on_stale_handles(),
                        }
                        tracing::warn!(token = %self.cfg.label, function = %fn_name(&function), rv = %rv_name(&rv), attempt, "token operation failed; recovering");
                        (function, rv, fault)
                    }
                    Err(other) => return Err(other),
                },
                Err(Error::Pkcs11 { function, rv }) if classify(rv) != Fault::Final => {
                    tracing::warn!(token = %self.cfg.label, function = %fn_name(&function), rv = %rv_name(&rv), attempt, "cannot open a token session");
                    let (generation, epoch) = {
                        let st = self.lock();
                        (st.generation, st.epoch)
                    };
                    self.rebuild(generation, epoch, rv, true);
                    on_stale_handles();
                    (function, rv, Fault::Token)
                }
                // The token was there when the pool opened: now it is away.
                Err(Error::TokenNotFound { .. }) => (
                    Function::GetSlotList,
                    RvError::TokenNotPresent,
                    Fault::Token,
                ),
                Err(e) => return Err(e),
            };
            let (function, rv, fault) = failure;
            if attempt > self.cfg.retries {
                return Err(Error::TokenUnavailable {
                    label: self.cfg.label.clone(),
                    function,
                    rv,
                    attempts: attempt,
                });
            }
            if fault == Fault::Token {
                std::thread::sleep(self.cfg.backoff * attempt);
            }
        }
    }

    /// Borrow a logged-in session, opening one if the pool is not full, or
    /// waiting for one to come back.
    pub(crate) fn acquire(&self) -> Result<Lease<'_>> {
        let deadline = Instant::now() + self.cfg.acquire_timeout;
        let mut st = self.lock();
        loop {
            if let Some(rv) = st.pin_rejected {
                return Err(Error::PinRejected {
                    label: self.cfg.label.clone(),
                    rv,
                });
            }
            if let Some(session) = st.idle.pop() {
                return Ok(Lease {
                    pool: self,
                    session: Some(session),
                    generation: st.generation,
                    epoch: st.epoch,
                });
            }
            if st.open < self.cfg.size {
                st.open += 1;
                let (generation, epoch, slot) = (st.generation, st.epoch, st.slot);
                drop(st);
                return match self.open_session(slot) {
                    Ok(session) => Ok(Lease {
                        pool: self,
                        session: Some(PooledSession::new(session)),
                        generation,
                        epoch,
                    }),
                    Err(e) => {
                        let mut st = self.lock();
                        if st.generation == generation {
                            st.open -= 1;
                        }
                        drop(st);
                        self.freed.notify_one();
                        Err(e)
                    }
                };
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::PoolExhausted {
                    size: self.cfg.size,
                    waited_ms: self.cfg.acquire_timeout.as_millis() as u64,
                });
            }
            st = self
                .freed
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    fn release(&self, session: PooledSession, generation: u64, epoch: u64, healthy: bool) {
        let mut st = self.lock();
        if generation == st.generation {
            if healthy {
                st.idle.push(session);
                drop(st);
                self.freed.notify_one();
                return;
            }
            st.open -= 1;
        }
        let same_library = epoch == st.epoch;
        drop(st);
        self.freed.notify_one();
        if same_library {
            close_quietly(session.session);
        }
        // Otherwise the library was re-initialised: the handle is meaningless
        // now and may name someone else's session, so it is simply forgotten
        // (sessions are opened without close-on-drop), its copies with it.
    }

    /// Empty the pool after a fault, once per generation; with `lost_token`
    /// the token is looked up again by label before the next session.
    fn rebuild(&self, generation: u64, epoch: u64, rv: RvError, lost_token: bool) {
        let mut st = self.lock();
        if st.generation != generation {
            return; // another thread already rebuilt it
        }
        st.generation += 1;
        if lost_token {
            st.slot = None;
        }
        let stale = std::mem::take(&mut st.idle);
        st.open = 0;
        let reinit = rv == RvError::CryptokiNotInitialized && st.epoch == epoch;
        if reinit {
            st.epoch += 1;
        }
        drop(st);
        if reinit {
            tracing::warn!(token = %self.cfg.label, "PKCS#11 library was finalised under us; initialising it again");
            if let Err(e) = initialize(&self.pkcs11) {
                tracing::error!(error = %e, "C_Initialize failed");
            }
        } else {
            stale.into_iter().for_each(|s| close_quietly(s.session));
        }
        self.freed.notify_all();
    }

    fn find_slot(&self) -> Result<Slot> {
        let slots = self.pkcs11.get_slots_with_token().map_err(ck)?;
        let mut present = Vec::new();
        for slot in slots {
            let info = match self.pkcs11.get_token_info(slot) {
                Ok(info) => info,
                Err(_) => continue, // a slot that vanished meanwhile
            };
            if !info.token_initialized() {
                continue;
            }
            let label = info.label().trim_end().to_owned();
            if label == self.cfg.label {
                return Ok(slot);
            }
            present.push(label);
        }
        Err(Error::TokenNotFound {
            label: self.cfg.label.clone(),
            module: self.cfg.module.clone(),
            present: if present.is_empty() {
                "none".into()
            } else {
                present.join(", ")
            },
        })
    }

    fn open_session(&self, slot: Option<Slot>) -> Result<Session> {
        let slot = match slot {
            Some(s) => s,
            None => {
                let s = self.find_slot()?;
                self.lock().slot = Some(s);
                s
            }
        };
        let session = self.pkcs11.open_rw_session_no_drop(slot).map_err(ck)?;
        let logged_in = match session.get_session_info() {
            Ok(info) => matches!(
                info.session_state(),
                SessionState::RwUser | SessionState::RoUser
            ),
            Err(e) => {
                close_quietly(session);
                return Err(ck(e));
            }
        };
        if !logged_in {
            if let Err(e) = self.login(&session) {
                close_quietly(session);
                return Err(e);
            }
        }
        Ok(session)
    }

    fn login(&self, session: &Session) -> Result<()> {
        if let Some(rv) = self.lock().pin_rejected {
            return Err(Error::PinRejected {
                label: self.cfg.label.clone(),
                rv,
            });
        }
        match session.login(UserType::User, Some(&self.pin)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
            Err(CkError::Pkcs11(rv, _)) if is_pin_rejection(rv) => {
                self.lock().pin_rejected = Some(rv);
                tracing::error!(token = %self.cfg.label, rv = %rv_name(&rv), "token refused the user PIN; not retrying");
                Err(Error::PinRejected {
                    label: self.cfg.label.clone(),
                    rv,
                })
            }
            Err(e) => Err(ck(e)),
        }
    }
}

impl Pool {
    /// (sessions leased now, sessions open).
    pub(crate) fn sessions(&self) -> (usize, usize) {
        let st = self.lock();
        (st.open.saturating_sub(st.idle.len()), st.open)
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let idle = std::mem::take(&mut self.lock().idle);
        idle.into_iter().for_each(|s| close_quietly(s.session));
    }
}

/// `C_Initialize` with OS locking; already initialised by another part of
/// the process is fine.
pub(crate) fn initialize(pkcs11: &Pkcs11) -> Result<()> {
    match pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        // Another part of this process (a second Token, a test) got there first.
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => Ok(()),
        Err(e) => Err(ck(e)),
    }
}

fn close_quietly(session: Session) {
    if let Err(e) = session.close() {
        tracing::debug!(error = %e, "closing a stale token session failed");
    }
}
