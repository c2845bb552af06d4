//! Entry points for the `cargo fuzz` targets in `fuzz/` (built only with
//! `--cfg fuzzing`, which cargo-fuzz sets): each takes arbitrary bytes and
//! must neither panic nor hang, whatever a peer, a broker or a config file
//! hands it. `scripts/fuzz.sh` runs them.

use bytes::Bytes;
use prost::Message as _;

use crate::envelope::{now_micros, Envelope};
use crate::topology::{GatewayId, UserId};
use crate::transport::redis::resume::{self as redis_resume, Progress};
use crate::{proto, Settings};

/// Envelope bytes as every transport carries them: decode, check as the
/// sender and as a receiver would, and round-trip what decodes.
pub fn envelope(data: &[u8]) {
    let Ok(envelope) = Envelope::decode(Bytes::copy_from_slice(data)) else {
        return;
    };
    let now = now_micros();
    let _ = envelope.validate(1 << 20, now);
    let _ = envelope.check_arrival(now);
    let again = Envelope::decode(envelope.encode()).expect("an encoded envelope decodes");
    assert_eq!(again, envelope, "an envelope survives a round trip");
}

/// Values read back from Redis: a presence session, a registry entry, and
/// the framing of the Redis transport's live messages (then the resume
/// bookkeeping over what was unframed).
pub fn stored_values(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (device, value) = text.split_once('\n').unwrap_or(("d", &text));
    let _ = crate::presence::redis::decode(&UserId::from("u"), device, value);
    let _ = crate::registry::decode(&GatewayId::from("g"), &text);
    let _ = redis_resume::entry_id(&text);
    let mut progress = Progress::default();
    for frame in data.split(|&b| b == b'\n') {
        if let Some((place, _body)) = redis_resume::unframe(&Bytes::copy_from_slice(frame)) {
            progress.received(place);
        }
    }
    let _ = progress.resume_from();
}

/// A config file: parsing and validation report problems, never panic.
pub fn config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Settings::from_toml(text);
    }
}

/// A Gateway API `SendBatch` request as a gateway could send it: decode,
/// then the sidecar's own conversion and checks of every envelope.
pub fn sidecar_request(data: &[u8]) {
    let Ok(request) = proto::SendBatchRequest::decode(data) else {
        return;
    };
    let me = GatewayId::from("gw-fuzz");
    for wire in request.envelopes {
        if let Ok(Ok(envelope)) = crate::sidecar::send::prepare(&me, wire) {
            let _ = envelope.validate(1 << 20, now_micros());
        }
    }
}
