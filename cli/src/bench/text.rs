//! Chat-like payloads: words, spaces, punctuation and line breaks drawn
//! from a small vocabulary, the way chat messages compress (a run of one
//! byte would compress a thousandfold and say nothing about compression).

/// Everyday chat words; their mix, not their meaning, is what matters.
const WORDS: [&str; 24] = [
    "hey", "are", "we", "still", "on", "for", "dinner", "tonight?", "I'll", "bring", "the",
    "photos", "from", "last", "week,", "and", "you", "said", "Sam", "is", "coming", "too.", "ok",
    "see",
];

/// `len` bytes of chat text; `seed` picks the word order, so messages differ.
pub fn chat_text(len: usize, seed: u64) -> Vec<u8> {
    let mut text = Vec::with_capacity(len + 16);
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    while text.len() < len {
        // xorshift64: cheap, and the same text for the same seed.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        text.extend_from_slice(WORDS[(x % WORDS.len() as u64) as usize].as_bytes());
        text.push(if x.is_multiple_of(11) { b'\n' } else { b' ' });
    }
    text.truncate(len);
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_as_long_as_asked_and_differs_by_seed() {
        assert_eq!(chat_text(4096, 1).len(), 4096);
        assert_eq!(chat_text(0, 1).len(), 0);
        assert_ne!(chat_text(256, 1), chat_text(256, 2));
        assert_eq!(chat_text(256, 3), chat_text(256, 3));
    }
}
