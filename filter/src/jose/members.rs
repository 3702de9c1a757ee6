//! One JSON object's members, read without building a map of `Value`s: strings stay borrowed
//! from the input when they have no escapes, numbers stay numbers, and only a nested object
//! becomes a map. For a DPoP proof's header and claims, read on every request, this saves most
//! of the allocations of a `Value` map.
//!
//! A member named twice is refused rather than resolved (RFC 7515 §4 and RFC 7519 §4 allow
//! either; a reader that silently keeps one of two values is how two readers disagree), and so
//! is an object of more than [`MAX_MEMBERS`] (no proof needs that many; the duplicate check
//! stays small).
#![forbid(unsafe_code)]

use std::borrow::Cow;
use std::cell::Cell;
use std::fmt;

use serde::de::{self, value::MapAccessDeserializer, DeserializeSeed, Deserializer as _, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Number, Value};

/// Most members an object may have.
pub const MAX_MEMBERS: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MembersError {
    /// Not JSON, or JSON that is not one object.
    NotAnObject,
    /// A member name appears twice.
    Duplicate,
    TooMany,
}

/// A member's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Member<'a> {
    /// No member of that name.
    Absent,
    /// A JSON string, unescaped (borrowed when it had no escapes).
    Str(Cow<'a, str>),
    Number(Number),
    Object(Map<String, Value>),
    /// `true`, `false`, `null` or an array.
    Other,
}

#[derive(Debug)]
pub struct Members<'a> {
    members: Vec<(Cow<'a, str>, Member<'a>)>,
}

impl<'a> Members<'a> {
    pub fn parse(json: &'a [u8]) -> Result<Members<'a>, MembersError> {
        let refusal = Cell::new(MembersError::NotAnObject);
        let mut reader = serde_json::Deserializer::from_slice(json);
        let members = reader.deserialize_any(MembersVisitor { refusal: &refusal }).map_err(|_| refusal.get())?;
        reader.end().map_err(|_| MembersError::NotAnObject)?;
        Ok(Members { members })
    }

    pub fn get(&self, name: &str) -> &Member<'a> {
        const ABSENT: &Member<'static> = &Member::Absent;
        self.members.iter().find(|(k, _)| k == name).map_or(ABSENT, |(_, v)| v)
    }
}

struct MembersVisitor<'c> {
    refusal: &'c Cell<MembersError>,
}

impl<'de> Visitor<'de> for MembersVisitor<'_> {
    type Value = Vec<(Cow<'de, str>, Member<'de>)>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    // Every other JSON type is refused here, without serde's default "invalid type" message:
    // formatting it would link float formatting (20 KB of .wasm) for a message nobody reads.
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        not_expected()
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        not_expected()
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        not_expected()
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        not_expected()
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        not_expected()
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        not_expected()
    }
    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<Self::Value, A::Error> {
        not_expected()
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        // A proof's header has three members, its claims five: one allocation for either.
        let mut members: Self::Value = Vec::with_capacity(8);
        while let Some(name) = map.next_key_seed(MemberName)? {
            if members.len() >= MAX_MEMBERS {
                self.refusal.set(MembersError::TooMany);
                return Err(de::Error::custom("too many members"));
            }
            if members.iter().any(|(k, _)| *k == name) {
                self.refusal.set(MembersError::Duplicate);
                return Err(de::Error::custom("duplicate member"));
            }
            let value: Member<'de> = map.next_value()?;
            members.push((name, value));
        }
        Ok(members)
    }
}

impl<'de> Deserialize<'de> for Member<'de> {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(MemberVisitor)
    }
}

/// A member name: a string, as serde_json reads every name (unescaped, surrogates checked),
/// borrowed from the input when it holds no escape. The JSON-RPC decoder (`mcp`) reads its
/// member names with it too.
pub(crate) struct MemberName;

impl<'de> DeserializeSeed<'de> for MemberName {
    type Value = Cow<'de, str>;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Cow<'de, str>, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for MemberName {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a member name")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(v))
    }
}

struct MemberVisitor;

impl<'de> Visitor<'de> for MemberVisitor {
    type Value = Member<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Member<'de>, E> {
        Ok(Member::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Member<'de>, E> {
        Ok(Member::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Member<'de>, E> {
        Ok(Member::Str(Cow::Owned(v)))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Member<'de>, E> {
        Ok(Member::Number(v.into()))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Member<'de>, E> {
        Ok(Member::Number(v.into()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Member<'de>, E> {
        Ok(Number::from_f64(v).map_or(Member::Other, Member::Number))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Member<'de>, E> {
        Ok(Member::Other)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Member<'de>, E> {
        Ok(Member::Other)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Member<'de>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Member::Other)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Member<'de>, A::Error> {
        Map::deserialize(MapAccessDeserializer::new(map)).map(Member::Object)
    }
}

fn not_expected<T, E: de::Error>() -> Result<T, E> {
    Err(E::custom("unexpected JSON type"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn members_are_read_as_serde_json_reads_them() {
        let json = br#" {"typ":"dpop+jwt","alg":"ES\u0032\u00356","n":1.5e3,"i":-7,"u":18446744073709551615,"jwk":{"kty":"OKP","x":[1]},"e":null,"t":true,"a":[{"x":1}]} "#;
        let m = Members::parse(json).unwrap();
        let value: Value = serde_json::from_slice(json).unwrap();
        assert_eq!(m.get("typ"), &Member::Str(Cow::Borrowed("dpop+jwt")));
        assert!(matches!(m.get("typ"), Member::Str(Cow::Borrowed(_))), "no escapes: borrowed");
        assert_eq!(m.get("alg"), &Member::Str("ES256".into()));
        for number in ["n", "i", "u"] {
            assert_eq!(m.get(number), &Member::Number(value[number].as_number().unwrap().clone()), "{number}");
        }
        assert_eq!(m.get("jwk"), &Member::Object(value["jwk"].as_object().unwrap().clone()));
        for other in ["e", "t", "a"] {
            assert_eq!(m.get(other), &Member::Other, "{other}");
        }
        assert_eq!(m.get("missing"), &Member::Absent);
    }

    #[test]
    fn duplicates_non_objects_and_floods_are_refused() {
        assert_eq!(Members::parse(br#"{"a":1,"a":1}"#).unwrap_err(), MembersError::Duplicate);
        // An escaped spelling of the same name is the same name.
        assert_eq!(Members::parse(br#"{"jti":"x","j\u0074i":"y"}"#).unwrap_err(), MembersError::Duplicate);
        for not_one in [&b"[]"[..], b"\"x\"", b"1", b"", b"{", b"{} {}", b"{\"a\":}", b"{\"a\":1,}"] {
            assert_eq!(Members::parse(not_one).unwrap_err(), MembersError::NotAnObject, "{:?}", String::from_utf8_lossy(not_one));
        }
        let members = |n: usize| format!("{{{}}}", (0..n).map(|i| format!("\"m{i}\":{i}")).collect::<Vec<_>>().join(","));
        assert!(Members::parse(members(MAX_MEMBERS).as_bytes()).is_ok());
        assert_eq!(Members::parse(members(MAX_MEMBERS + 1).as_bytes()).unwrap_err(), MembersError::TooMany);
        // Nested objects are values, not members: their names may repeat the outer ones.
        assert!(Members::parse(br#"{"a":{"a":1},"b":[{"a":2}]}"#).is_ok());
    }
}
