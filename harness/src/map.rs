//! Header maps: the ordered, case-insensitive list Envoy keeps, and the ABI's binary encoding.
//!
//! Encoding (little-endian): `u32` pair count, then a `u32` key length and a `u32` value length
//! per pair, then each key and each value followed by a NUL byte. An empty map may also arrive
//! as zero bytes or a single NUL byte.

use std::fmt;

/// An HTTP field map as Envoy holds it: ordered, keys lower-cased, values raw bytes,
/// repeated keys allowed.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Headers {
    pairs: Vec<(String, Vec<u8>)>,
}

impl Headers {
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a map from pairs, lower-casing the keys as Envoy's `LowerCaseString` does.
    pub fn from_pairs<K: AsRef<str>, V: AsRef<[u8]>>(pairs: impl IntoIterator<Item = (K, V)>) -> Self {
        let mut headers = Self::new();
        for (k, v) in pairs {
            headers.add(k.as_ref(), v.as_ref());
        }
        headers
    }

    /// The first value of `name` (case-insensitive), as Envoy's `proxy_get_header_map_value` does.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.pairs.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_slice())
    }

    /// The first value of `name` as text (lossy for non-UTF-8 bytes).
    pub fn get_str(&self, name: &str) -> Option<String> {
        self.get(name).map(|v| String::from_utf8_lossy(v).into_owned())
    }

    /// Every value of `name`, in order.
    pub fn get_all(&self, name: &str) -> Vec<&[u8]> {
        self.pairs.iter().filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_slice()).collect()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Appends a pair (`addCopy`).
    pub fn add(&mut self, name: &str, value: &[u8]) {
        self.pairs.push((name.to_ascii_lowercase(), value.to_vec()));
    }

    /// Replaces every value of `name` with one (`setCopy`): the first occurrence keeps its
    /// place, later ones go; a missing key is appended.
    pub fn replace(&mut self, name: &str, value: &[u8]) {
        let lower = name.to_ascii_lowercase();
        match self.pairs.iter().position(|(k, _)| *k == lower) {
            Some(first) => {
                let mut index = 0;
                self.pairs.retain(|(k, _)| {
                    let keep = index <= first || *k != lower;
                    index += 1;
                    keep
                });
                if let Some(pair) = self.pairs.get_mut(first) {
                    pair.1 = value.to_vec();
                }
            }
            None => self.pairs.push((lower, value.to_vec())),
        }
    }

    /// Removes every value of `name`.
    pub fn remove(&mut self, name: &str) {
        self.pairs.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
    }

    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> + Clone {
        self.pairs.iter().map(|(k, v)| (k.as_str(), v.as_slice()))
    }

    pub fn pairs(&self) -> &[(String, Vec<u8>)] {
        &self.pairs
    }

    /// The pairs as text, for assertions and printing.
    pub fn to_string_pairs(&self) -> Vec<(String, String)> {
        self.pairs.iter().map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned())).collect()
    }

    /// The ABI encoding of this map.
    pub fn serialize(&self) -> Vec<u8> {
        serialize(self.iter())
    }
}

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.pairs.iter().map(|(k, v)| (k, String::from_utf8_lossy(v)))).finish()
    }
}

impl<K: AsRef<str>, V: AsRef<[u8]>> FromIterator<(K, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Self::from_pairs(iter)
    }
}

/// Serializes pairs in the ABI map encoding.
pub fn serialize<K: AsRef<[u8]>, V: AsRef<[u8]>>(pairs: impl Iterator<Item = (K, V)> + Clone) -> Vec<u8> {
    let count = pairs.clone().count();
    let mut out = Vec::with_capacity(4 + count * 10);
    out.extend_from_slice(&len_u32(count).to_le_bytes());
    for (k, v) in pairs.clone() {
        out.extend_from_slice(&len_u32(k.as_ref().len()).to_le_bytes());
        out.extend_from_slice(&len_u32(v.as_ref().len()).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_ref());
        out.push(0);
        out.extend_from_slice(v.as_ref());
        out.push(0);
    }
    out
}

fn len_u32(n: usize) -> u32 {
    // Maps come from guest memory (at most 4 GiB), so lengths always fit.
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Why a serialized map could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapError(pub String);

impl fmt::Display for MapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed serialized map: {}", self.0)
    }
}

impl std::error::Error for MapError {}

/// Raw key/value pairs, as they come out of the encoding.
pub type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// Parses the ABI map encoding. Every length is checked against the input, so a buggy plugin's
/// bytes give an error, never a panic.
pub fn deserialize(bytes: &[u8]) -> Result<Pairs, MapError> {
    if bytes.is_empty() || bytes == [0] {
        return Ok(Vec::new());
    }
    let count = read_u32(bytes, 0).ok_or_else(|| MapError("shorter than its 4-byte pair count".into()))? as usize;
    let sizes_end = count
        .checked_mul(8)
        .and_then(|n| n.checked_add(4))
        .filter(|end| *end <= bytes.len())
        .ok_or_else(|| MapError(format!("{count} pairs announced but only {} bytes", bytes.len())))?;
    let mut pairs = Vec::with_capacity(count);
    let mut data = sizes_end;
    for n in 0..count {
        let key_len = read_u32(bytes, 4 + n * 8).ok_or_else(|| MapError("truncated size table".into()))? as usize;
        let value_len = read_u32(bytes, 8 + n * 8).ok_or_else(|| MapError("truncated size table".into()))? as usize;
        let (key, next) = take_terminated(bytes, data, key_len).ok_or_else(|| MapError(format!("key {n} runs past the end or lacks its NUL")))?;
        let (value, next) =
            take_terminated(bytes, next, value_len).ok_or_else(|| MapError(format!("value {n} runs past the end or lacks its NUL")))?;
        pairs.push((key.to_vec(), value.to_vec()));
        data = next;
    }
    Ok(pairs)
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let raw: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
    Some(u32::from_le_bytes(raw))
}

/// `len` bytes at `at`, which must be followed by a NUL; returns them and the offset after the NUL.
fn take_terminated(bytes: &[u8], at: usize, len: usize) -> Option<(&[u8], usize)> {
    let end = at.checked_add(len)?;
    let item = bytes.get(at..end)?;
    (*bytes.get(end)? == 0).then_some((item, end + 1))
}

/// Parses a map and lower-cases its keys as Envoy does when building a header map from pairs.
pub fn deserialize_headers(bytes: &[u8]) -> Result<Headers, MapError> {
    let mut headers = Headers::new();
    for (k, v) in deserialize(bytes)? {
        headers.add(&String::from_utf8_lossy(&k), &v);
    }
    Ok(headers)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    const MAP: &[(&str, &str)] =
        &[(":method", "GET"), (":path", "/bytes/1"), (":authority", "httpbin.org"), ("Powered-By", "proxy-wasm")];

    /// The serialized-map test vector of the Rust proxy-wasm SDK 0.2.5 (`hostcalls::utils::tests`).
    #[rustfmt::skip]
    const SERIALIZED_MAP: &[u8] = &[
        4, 0, 0, 0,
        7, 0, 0, 0, 3, 0, 0, 0,
        5, 0, 0, 0, 8, 0, 0, 0,
        10, 0, 0, 0, 11, 0, 0, 0,
        10, 0, 0, 0, 10, 0, 0, 0,
        58, 109, 101, 116, 104, 111, 100, 0,
        71, 69, 84, 0,
        58, 112, 97, 116, 104, 0,
        47, 98, 121, 116, 101, 115, 47, 49, 0,
        58, 97, 117, 116, 104, 111, 114, 105, 116, 121, 0,
        104, 116, 116, 112, 98, 105, 110, 46, 111, 114, 103, 0,
        80, 111, 119, 101, 114, 101, 100, 45, 66, 121, 0,
        112, 114, 111, 120, 121, 45, 119, 97, 115, 109, 0,
    ];

    #[test]
    fn serializes_the_sdk_vector() {
        assert_eq!(serialize(MAP.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes()))), SERIALIZED_MAP);
    }

    #[test]
    fn deserializes_the_sdk_vector() {
        let pairs = deserialize(SERIALIZED_MAP).unwrap();
        let expected: Vec<(Vec<u8>, Vec<u8>)> = MAP.iter().map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec())).collect();
        assert_eq!(pairs, expected);
    }

    #[test]
    fn spec_example_and_empty_forms() {
        // {"a": "1", "b": "22"} from the ABI spec.
        let bytes = [2, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, b'a', 0, b'1', 0, b'b', 0, b'2', b'2', 0];
        assert_eq!(deserialize(&bytes).unwrap(), vec![(b"a".to_vec(), b"1".to_vec()), (b"b".to_vec(), b"22".to_vec())]);
        assert!(deserialize(&[]).unwrap().is_empty());
        assert!(deserialize(&[0]).unwrap().is_empty());
        assert!(deserialize(&[0, 0, 0, 0]).unwrap().is_empty());
        assert_eq!(serialize(std::iter::empty::<(&[u8], &[u8])>()), [0, 0, 0, 0]);
    }

    #[test]
    fn binary_values_round_trip() {
        let headers = Headers::from_pairs([("x-bin", &[0xff_u8, 0x00, 0x80][..])]);
        let back = deserialize_headers(&headers.serialize()).unwrap();
        assert_eq!(back.get("X-Bin"), Some(&[0xff_u8, 0x00, 0x80][..]));
    }

    #[test]
    fn malformed_maps_are_errors_not_panics() {
        assert!(deserialize(&[1, 0]).is_err()); // short count
        assert!(deserialize(&[1, 0, 0, 0]).is_err()); // no size table
        assert!(deserialize(&[0xff, 0xff, 0xff, 0xff, 0, 0]).is_err()); // absurd count
        assert!(deserialize(&[1, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, b'a', 0, 0]).is_err()); // key past end
        assert!(deserialize(&[1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, b'a', b'x', b'1', 0]).is_err()); // missing NUL
        for len in 0..SERIALIZED_MAP.len() {
            let _ = deserialize(&SERIALIZED_MAP[..len]);
        }
    }

    #[test]
    fn replace_keeps_first_position_and_drops_duplicates() {
        let mut h = Headers::from_pairs([("a", "1"), ("b", "2"), ("A", "3")]);
        h.replace("a", b"9");
        assert_eq!(h.to_string_pairs(), vec![("a".into(), "9".into()), ("b".into(), "2".into())]);
        h.replace("c", b"4");
        assert_eq!(h.get_str("C").as_deref(), Some("4"));
        h.remove("B");
        assert_eq!(h.len(), 2);
    }
}
