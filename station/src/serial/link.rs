//! [`SerialDevice`]: the station side of the serial protocol over a tty.

use std::collections::VecDeque;
use std::fmt;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::fs::{flock, open, FlockOperation, Mode, OFlags};
use rustix::io::Errno;
use rustix::termios::{
    tcflush, tcgetattr, tcsetattr, ControlModes, OptionalActions, QueueSelector,
};

use super::codec::{
    tag, Command, ErrorCode, FrameDecoder, FrameError, Packet, KIND_ERROR, KIND_OK,
};
use crate::device::{DeviceLink, DeviceStatus};
use crate::Error;

/// Timeouts and retries of a [`SerialDevice`].
#[derive(Clone, Debug)]
pub struct SerialOptions {
    /// How long to wait for a reply to a quick request.
    pub timeout: Duration,
    /// How long to wait for a reply to GEN_KEY and SIGN.
    pub slow_timeout: Duration,
    /// How many times a request is sent again after a timeout or a
    /// corrupted exchange.
    pub retries: u32,
    /// Line speed in baud (ignored by pseudo-terminals).
    pub baud: u32,
}

impl Default for SerialOptions {
    fn default() -> Self {
        SerialOptions {
            timeout: Duration::from_secs(2),
            slow_timeout: Duration::from_secs(10),
            retries: 3,
            baud: 115_200,
        }
    }
}

/// A device on a serial line, speaking the protocol of [`super`].
pub struct SerialDevice {
    fd: OwnedFd,
    path: PathBuf,
    options: SerialOptions,
    decoder: FrameDecoder,
    pending: VecDeque<Result<Packet, FrameError>>,
    next_id: u32,
}

impl fmt::Debug for SerialDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SerialDevice")
            .field("path", &self.path)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// What one exchange ended with, before mapping to [`Error`].
enum Failure {
    Timeout,
    Corrupted(FrameError),
}

impl SerialDevice {
    /// Opens the tty at `path` with the default options.
    pub fn open(path: impl AsRef<Path>) -> Result<SerialDevice, Error> {
        SerialDevice::open_with(path, SerialOptions::default())
    }

    /// Opens the tty at `path`: raw mode, the configured speed, an exclusive
    /// advisory lock, and the input queue flushed.
    pub fn open_with(
        path: impl AsRef<Path>,
        options: SerialOptions,
    ) -> Result<SerialDevice, Error> {
        let path = path.as_ref().to_path_buf();
        let unreachable = |what: &str, e: Errno| {
            Error::DeviceUnreachable(format!("serial {}: {what}: {e}", path.display()))
        };
        let fd = open(
            &path,
            OFlags::RDWR | OFlags::NOCTTY | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| unreachable("open", e))?;
        match flock(&fd, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(Errno::WOULDBLOCK) => {
                return Err(Error::DeviceUnreachable(format!(
                    "serial {}: in use by another process",
                    path.display()
                )))
            }
            Err(e) => return Err(unreachable("lock", e)),
        }
        let mut termios = tcgetattr(&fd).map_err(|e| unreachable("not a terminal", e))?;
        termios.make_raw();
        // 8N1, receiver on, modem lines ignored, no hardware flow control
        termios.control_modes |= ControlModes::CLOCAL | ControlModes::CREAD;
        termios.control_modes -= ControlModes::CSTOPB | ControlModes::CRTSCTS;
        termios
            .set_speed(options.baud)
            .map_err(|e| unreachable("line speed", e))?;
        tcsetattr(&fd, OptionalActions::Now, &termios).map_err(|e| unreachable("raw mode", e))?;
        tcflush(&fd, QueueSelector::IFlush).map_err(|e| unreachable("flush", e))?;
        let mut seed = [0u8; 4];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut seed);
        Ok(SerialDevice {
            fd,
            path,
            options,
            decoder: FrameDecoder::new(),
            pending: VecDeque::new(),
            next_id: u32::from_be_bytes(seed).max(1),
        })
    }

    /// The tty path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// GET_PUBKEY: the device key's SubjectPublicKeyInfo (DER), or `None`
    /// when the device has no key yet.
    pub fn public_key(&mut self) -> Result<Option<Vec<u8>>, Error> {
        match self.call(Packet::request(Command::GetPubkey, 0)) {
            Ok(reply) => required(&reply, tag::PUBKEY, Command::GetPubkey).map(Some),
            Err(CallError::Device(ErrorCode::NoKey, _)) => Ok(None),
            Err(e) => Err(self.error(Command::GetPubkey, e)),
        }
    }

    fn request(&mut self, packet: Packet) -> Result<Packet, Error> {
        let command = packet.command().ok_or(Error::Unreachable("request kind"))?;
        self.call(packet).map_err(|e| self.error(command, e))
    }

    fn id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        id
    }

    /// One request and its reply, with retries.
    fn call(&mut self, mut packet: Packet) -> Result<Packet, CallError> {
        let command = packet.command().ok_or(CallError::Local("request kind"))?;
        packet.id = self.id();
        let frame = packet
            .encode()
            .map_err(|_| CallError::Local("request larger than a frame"))?;
        let timeout = match command {
            Command::GenKey | Command::Sign => self.options.slow_timeout,
            _ => self.options.timeout,
        };
        let mut last = Failure::Timeout;
        for _attempt in 0..=self.options.retries {
            self.write_all(&frame, Instant::now() + timeout)?;
            let deadline = Instant::now() + timeout;
            last = loop {
                let Some(result) = self.next_frame(deadline)? else {
                    break Failure::Timeout;
                };
                let reply = match result {
                    Ok(reply) => reply,
                    // a reply damaged on the line: ask again at once
                    Err(e) => break Failure::Corrupted(e),
                };
                match reply.kind {
                    KIND_OK if reply.id == packet.id => return Ok(reply),
                    KIND_ERROR if reply.id == packet.id || reply.id == 0 => {
                        let (code, message) = reply.error_parts();
                        match ErrorCode::from_u16(code) {
                            // our request arrived damaged: send it again
                            Some(
                                code @ (ErrorCode::BadCrc
                                | ErrorCode::BadFrame
                                | ErrorCode::TooLarge),
                            ) if reply.id == 0 => {
                                break Failure::Corrupted(match code {
                                    ErrorCode::BadCrc => FrameError::BadCrc,
                                    ErrorCode::TooLarge => FrameError::TooLarge,
                                    _ => FrameError::BadFrame,
                                })
                            }
                            // an id-0 answer of another kind is not ours
                            _ if reply.id == 0 => continue,
                            Some(code) => return Err(CallError::Device(code, clean(&message))),
                            None => return Err(CallError::UnknownCode(code, clean(&message))),
                        }
                    }
                    // stale: a reply to an earlier attempt or request
                    _ => continue,
                }
            };
        }
        Err(CallError::Exhausted(
            last,
            self.options.retries + 1,
            timeout,
        ))
    }

    /// The next decoded frame, or `None` at the deadline.
    fn next_frame(
        &mut self,
        deadline: Instant,
    ) -> Result<Option<Result<Packet, FrameError>>, CallError> {
        let mut buf = zeroize::Zeroizing::new([0u8; 512]);
        loop {
            if let Some(frame) = self.pending.pop_front() {
                return Ok(Some(frame));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            if !self.wait(PollFlags::IN, deadline - now)? {
                return Ok(None);
            }
            match rustix::io::read(&self.fd, &mut buf[..]) {
                Ok(0) => return Err(CallError::Io("read", Errno::PIPE)),
                Ok(n) => {
                    let frames = self.decoder.feed(&buf[..n]);
                    self.pending.extend(frames);
                }
                Err(Errno::AGAIN | Errno::INTR) => {}
                Err(e) => return Err(CallError::Io("read", e)),
            }
        }
    }

    fn write_all(&mut self, mut bytes: &[u8], deadline: Instant) -> Result<(), CallError> {
        while !bytes.is_empty() {
            let now = Instant::now();
            if now >= deadline || !self.wait(PollFlags::OUT, deadline - now)? {
                return Err(CallError::Io("write", Errno::TIMEDOUT));
            }
            match rustix::io::write(&self.fd, bytes) {
                Ok(n) => bytes = &bytes[n..],
                Err(Errno::AGAIN | Errno::INTR) => {}
                Err(e) => return Err(CallError::Io("write", e)),
            }
        }
        Ok(())
    }

    /// Waits for `flags` on the tty; false on timeout.
    fn wait(&self, flags: PollFlags, timeout: Duration) -> Result<bool, CallError> {
        let mut fds = [PollFd::new(&self.fd, flags)];
        let timeout = Timespec {
            tv_sec: i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX),
            tv_nsec: i64::from(timeout.subsec_nanos()),
        };
        match poll(&mut fds, Some(&timeout)) {
            Ok(0) => Ok(false),
            Ok(_) => {
                let revents = fds[0].revents();
                if revents.intersects(PollFlags::HUP | PollFlags::ERR | PollFlags::NVAL)
                    && !revents.intersects(flags)
                {
                    return Err(CallError::Io("poll", Errno::IO));
                }
                Ok(true)
            }
            Err(Errno::INTR) => Ok(true),
            Err(e) => Err(CallError::Io("poll", e)),
        }
    }

    fn error(&self, command: Command, e: CallError) -> Error {
        let at = format!("serial {}: {}", self.path.display(), command.name());
        match e {
            CallError::Device(ErrorCode::KeyExists, m) => {
                Error::DeviceHolds(format!("a key ({at}: KEY_EXISTS: {m})"))
            }
            CallError::Device(ErrorCode::Locked, m) => Error::DeviceHolds(format!(
                "its lock-down and refuses writes ({at}: LOCKED: {m})"
            )),
            CallError::Device(code, m) => {
                Error::DeviceRefused(format!("{at}: {}: {m}", code.name()))
            }
            CallError::UnknownCode(code, m) => {
                Error::DeviceRefused(format!("{at}: error code {code}: {m}"))
            }
            CallError::Exhausted(Failure::Timeout, attempts, timeout) => {
                Error::DeviceUnreachable(format!(
                    "{at}: timeout: no reply within {} ms ({attempts} attempt{})",
                    timeout.as_millis(),
                    if attempts == 1 { "" } else { "s" }
                ))
            }
            CallError::Exhausted(Failure::Corrupted(f), attempts, _) => Error::DeviceUnreachable(
                format!("{at}: the line keeps corrupting frames ({f}, {attempts} attempts)"),
            ),
            CallError::Io(op, e) => Error::DeviceUnreachable(format!("{at}: {op}: {e}")),
            CallError::Protocol(m) => Error::DeviceRefused(format!("{at}: protocol: {m}")),
            CallError::Local(m) => Error::DeviceRefused(format!("{at}: {m}")),
        }
    }
}

enum CallError {
    /// The device answered ERROR with a known code.
    Device(ErrorCode, String),
    /// The device answered ERROR with a code this station does not know.
    UnknownCode(u16, String),
    /// No good reply after every attempt (attempts, timeout per attempt).
    Exhausted(Failure, u32, Duration),
    /// The tty failed.
    Io(&'static str, Errno),
    /// An OK reply that lacks what it must carry.
    Protocol(String),
    /// The request cannot be sent as it is.
    Local(&'static str),
}

/// A device message fit to print: printable ASCII, at most 200 characters.
fn clean(message: &str) -> String {
    message
        .chars()
        .take(200)
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect()
}

fn required(reply: &Packet, tag: u8, command: Command) -> Result<Vec<u8>, Error> {
    reply.single(tag).map(<[u8]>::to_vec).ok_or_else(|| {
        Error::DeviceRefused(format!(
            "{}: the OK reply lacks field {tag:#04x} (or repeats it)",
            command.name()
        ))
    })
}

impl DeviceLink for SerialDevice {
    fn uid(&mut self) -> Result<Vec<u8>, Error> {
        let reply = self.request(Packet::request(Command::GetUid, 0))?;
        let uid = required(&reply, tag::UID, Command::GetUid)?;
        if !(8..=32).contains(&uid.len()) {
            return Err(self.error(
                Command::GetUid,
                CallError::Protocol(format!("UID of {} bytes (8-32 expected)", uid.len())),
            ));
        }
        Ok(uid)
    }

    fn status(&mut self) -> Result<DeviceStatus, Error> {
        let reply = self.request(Packet::request(Command::Status, 0))?;
        let locked = match reply.single(tag::LOCKED) {
            Some([0]) => false,
            Some([1]) => true,
            _ => {
                return Err(self.error(
                    Command::Status,
                    CallError::Protocol("LOCKED field missing or not 0/1".into()),
                ))
            }
        };
        let mut secrets = Vec::new();
        for name in reply.all(tag::NAME) {
            match std::str::from_utf8(name) {
                Ok(name) => secrets.push(name.to_owned()),
                Err(_) => {
                    return Err(self.error(
                        Command::Status,
                        CallError::Protocol("a secret name that is not UTF-8".into()),
                    ))
                }
            }
        }
        Ok(DeviceStatus {
            public_key: reply.get(tag::PUBKEY).map(<[u8]>::to_vec),
            certificate: reply.get(tag::CERT).map(<[u8]>::to_vec),
            secrets,
            locked,
        })
    }

    fn generate_key(&mut self) -> Result<Vec<u8>, Error> {
        let reply = self.request(Packet::request(Command::GenKey, 0))?;
        required(&reply, tag::PUBKEY, Command::GenKey)
    }

    fn sign(&mut self, message: &[u8]) -> Result<Vec<u8>, Error> {
        let reply = self.request(Packet::request(Command::Sign, 0).with(tag::MESSAGE, message))?;
        required(&reply, tag::SIGNATURE, Command::Sign)
    }

    fn put_certificates(&mut self, certificate: &[u8], chain: &[Vec<u8>]) -> Result<(), Error> {
        let mut packet = Packet::request(Command::PutCert, 0).with(tag::CERT, certificate);
        for cert in chain {
            packet.push(tag::CERT, cert);
        }
        self.request(packet).map(drop)
    }

    fn put_secret(&mut self, name: &str, secret: &[u8]) -> Result<(), Error> {
        let packet = Packet::request(Command::PutSecret, 0)
            .with(tag::NAME, name.as_bytes())
            .with(tag::SECRET, secret);
        self.request(packet).map(drop)
    }

    fn lock(&mut self) -> Result<(), Error> {
        self.request(Packet::request(Command::Lock, 0)).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::clean;

    #[test]
    fn device_messages_are_sanitised() {
        assert_eq!(clean("ok\x1b[31m\nred"), "ok?[31m?red");
        assert_eq!(clean(&"x".repeat(500)).len(), 200);
    }
}
