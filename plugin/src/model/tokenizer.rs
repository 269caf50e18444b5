//! The bundle's word tokenizer: lowercase, split on anything not `a-z0-9`, each word → its
//! index in the vocabulary (unknown → `unk_id`), truncate / pad with `pad_id` to `max_len`.

use super::bundle::TextSpec;

/// Token ids `[max_len]` for `prompt`, and how many words were not in the vocabulary.
pub fn tokenize(spec: &TextSpec, prompt: &str) -> (Vec<i64>, Vec<String>) {
    let text = if spec.lowercase {
        prompt.to_lowercase()
    } else {
        prompt.to_string()
    };
    let mut ids = Vec::with_capacity(spec.max_len);
    let mut unknown = Vec::new();
    for word in text.split(|c: char| {
        !(c.is_ascii_lowercase()
            || c.is_ascii_digit()
            || (!spec.lowercase && c.is_ascii_uppercase()))
    }) {
        if word.is_empty() {
            continue;
        }
        let id = match spec.vocab.iter().position(|v| v == word) {
            Some(i) => i as i64,
            None => {
                unknown.push(word.to_string());
                spec.unk_id
            }
        };
        if ids.len() < spec.max_len {
            ids.push(id);
        }
    }
    ids.resize(spec.max_len, spec.pad_id);
    (ids, unknown)
}
