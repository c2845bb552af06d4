//! [`Cause`]: the underlying error a library error keeps as its `source`,
//! and [`Report`], which prints an error with every cause behind it.
//!
//! The library's errors say what failed with which input; their `source`
//! says why. Their `Display` leaves the cause out, so a chain printer (the
//! CLI's, `anyhow`'s `{:#}`, [`Report`]) shows each cause once.

use std::error::Error;
use std::fmt;
use std::sync::Arc;

/// Why something failed: the underlying error, shared so the errors that
/// hold it stay `Clone`. Its `Display` is the underlying error's and its
/// `source` the underlying error's source, so a chain reads through it.
#[derive(Clone)]
pub struct Cause(Arc<dyn Error + Send + Sync + 'static>);

impl Cause {
    /// Keeps `error` as the cause.
    pub fn new(error: impl Error + Send + Sync + 'static) -> Self {
        Self(Arc::new(error))
    }

    /// `error`, behind a line saying what was being done when it happened
    /// (`"bad producer settings"`): the line is this cause, `error` its source.
    pub fn context(what: impl Into<String>, error: impl Error + Send + Sync + 'static) -> Self {
        Self(Arc::new(Context {
            what: what.into(),
            source: Box::new(error),
        }))
    }

    /// A cause that is only a message: the failure was found here (a full
    /// queue, a timeout, a reply that says no), with no error behind it.
    pub fn from_message(message: impl Into<String>) -> Self {
        Self(Arc::new(Message(message.into())))
    }
}

/// For client libraries whose errors come boxed (`async_nats::Error`).
impl From<Box<dyn Error + Send + Sync + 'static>> for Cause {
    fn from(error: Box<dyn Error + Send + Sync + 'static>) -> Self {
        Self(Arc::from(error))
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Debug for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Error for Cause {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.0.source()
    }
}

/// A cause with nothing behind it.
#[derive(Debug)]
struct Message(String);

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Error for Message {}

/// What was being done, and the error that stopped it.
#[derive(Debug)]
struct Context {
    what: String,
    source: Box<dyn Error + Send + Sync + 'static>,
}

impl fmt::Display for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.what)
    }
}

impl Error for Context {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&*self.source)
    }
}

/// Displays an error and each of its causes, joined with `": "` (what
/// `anyhow`'s `{:#}` prints): for logs and status messages, where only
/// one line of text goes out.
pub struct Report<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut next = self.0.source();
        while let Some(cause) = next {
            write!(f, ": {cause}")?;
            next = cause.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("publish to gateway gw-1 failed")]
    struct Failed {
        #[source]
        reason: Cause,
    }

    #[test]
    fn a_chain_shows_each_cause_once() {
        let io = std::io::Error::other("connection reset");
        let err = Failed {
            reason: Cause::context("write to replay stream", io),
        };
        assert_eq!(err.to_string(), "publish to gateway gw-1 failed");
        let mut chain = vec![err.to_string()];
        let mut next = err.source();
        while let Some(cause) = next {
            chain.push(cause.to_string());
            next = cause.source();
        }
        assert_eq!(
            chain,
            [
                "publish to gateway gw-1 failed",
                "write to replay stream",
                "connection reset"
            ]
        );
        assert_eq!(
            Report(&err).to_string(),
            "publish to gateway gw-1 failed: write to replay stream: connection reset"
        );
    }

    #[test]
    fn a_message_ends_the_chain() {
        let err = Failed {
            reason: Cause::from_message("queue full"),
        };
        let cause = err.source().expect("the cause");
        assert_eq!(cause.to_string(), "queue full");
        assert!(cause.source().is_none());
        assert_eq!(
            Report(&err).to_string(),
            "publish to gateway gw-1 failed: queue full"
        );
    }
}
