//! Just enough of a BTF reader to find where a kernel structure keeps a field: aya has no
//! CO-RE for Rust programs, and `aya::Btf` does not expose members, so the unix-socket
//! programs get their field offsets from here (read from `/sys/kernel/btf/vmlinux`).
//!
//! Format: `include/uapi/linux/btf.h` and Documentation/bpf/btf.rst.

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum BtfError {
    #[error("not BTF data (bad header)")]
    Header,
    #[error("truncated BTF type section")]
    Truncated,
    #[error("unknown BTF kind {0}")]
    Kind(u32),
    #[error("the kernel's BTF has no struct {0}")]
    NoStruct(String),
    #[error("the kernel's BTF has no field {field} in struct {ty}")]
    NoField { ty: String, field: String },
    #[error("{what} is {size} bytes in the kernel's BTF, expected {expected}")]
    Size {
        what: String,
        size: u32,
        expected: u32,
    },
}

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

struct Member {
    name: u32,
    ty: u32,
    /// Bits from the start of the enclosing type.
    bit_offset: u32,
}

/// One type's header. Members are decoded from the data only when a lookup needs them: a
/// kernel's BTF has over a hundred thousand types, and this is read at every attach.
struct Type {
    name: u32,
    kind: u32,
    kind_flag: bool,
    /// Size (ints, structs, unions, enums) or referenced type (pointers, typedefs, modifiers).
    size_or_ref: u32,
    /// Members (structs and unions): how many, and where they start in the type section.
    vlen: u32,
    members_at: usize,
}

/// The types of one BTF blob, borrowed from it.
pub struct Btf<'a> {
    strings: &'a [u8],
    types_data: &'a [u8],
    /// Index = type ID (0 is `void`).
    types: Vec<Type>,
}

fn u16_at(data: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(data.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(data.get(at..at + 4)?.try_into().ok()?))
}

impl<'a> Btf<'a> {
    /// Parses little-endian BTF (the only kind isolate runs on).
    pub fn parse(data: &'a [u8]) -> Result<Self, BtfError> {
        if u16_at(data, 0) != Some(0xeb9f) {
            return Err(BtfError::Header);
        }
        let field = |at| u32_at(data, at).ok_or(BtfError::Header);
        let hdr_len = field(4)? as usize;
        let (type_off, type_len) = (field(8)? as usize, field(12)? as usize);
        let (str_off, str_len) = (field(16)? as usize, field(20)? as usize);
        let types_data = data
            .get(hdr_len + type_off..hdr_len + type_off + type_len)
            .ok_or(BtfError::Header)?;
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or(BtfError::Header)?;

        let mut types = vec![Type {
            name: 0,
            kind: 0,
            kind_flag: false,
            size_or_ref: 0,
            vlen: 0,
            members_at: 0,
        }];
        let mut at = 0;
        while at < types_data.len() {
            let word = |i: usize| u32_at(types_data, at + 4 * i).ok_or(BtfError::Truncated);
            let (name, info, size_or_ref) = (word(0)?, word(1)?, word(2)?);
            at += 12;
            let kind = (info >> 24) & 0x1f;
            let vlen = info & 0xffff;
            let extra = match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * vlen as usize,
                KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen as usize,
                KIND_PTR | 7 | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | 12
                | KIND_FLOAT | KIND_TYPE_TAG => 0,
                other => return Err(BtfError::Kind(other)),
            };
            types.push(Type {
                name,
                kind,
                kind_flag: info >> 31 == 1,
                size_or_ref,
                vlen,
                members_at: at,
            });
            at += extra;
        }
        if at != types_data.len() {
            return Err(BtfError::Truncated);
        }
        Ok(Self {
            strings,
            types_data,
            types,
        })
    }

    fn string(&self, offset: u32) -> &'a [u8] {
        let rest = self.strings.get(offset as usize..).unwrap_or_default();
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        &rest[..end]
    }

    /// The members of a struct or union (none for other kinds).
    fn members(&self, ty: &Type) -> impl Iterator<Item = Member> + '_ {
        let count = if matches!(ty.kind, KIND_STRUCT | KIND_UNION) {
            ty.vlen as usize
        } else {
            0
        };
        let kind_flag = ty.kind_flag;
        let at = ty.members_at;
        (0..count).filter_map(move |i| {
            let word = |j: usize| u32_at(self.types_data, at + 12 * i + 4 * j);
            let offset = word(2)?;
            Some(Member {
                name: word(0)?,
                ty: word(1)?,
                // With kind_flag, the top 8 bits hold a bitfield's size.
                bit_offset: if kind_flag {
                    offset & 0x00ff_ffff
                } else {
                    offset
                },
            })
        })
    }

    /// The first complete definition of `struct name`.
    fn struct_id(&self, name: &str) -> Result<u32, BtfError> {
        self.types
            .iter()
            .position(|ty| {
                ty.kind == KIND_STRUCT && ty.vlen > 0 && self.string(ty.name) == name.as_bytes()
            })
            .map(|id| id as u32)
            .ok_or_else(|| BtfError::NoStruct(name.to_owned()))
    }

    /// Follows typedefs and modifiers to the type they name.
    fn resolve(&self, mut id: u32) -> u32 {
        for _ in 0..32 {
            match self.types.get(id as usize) {
                Some(ty)
                    if matches!(
                        ty.kind,
                        KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG
                    ) =>
                {
                    id = ty.size_or_ref;
                }
                _ => break,
            }
        }
        id
    }

    /// Size in bytes of a resolved type (pointers are 8 bytes on every target isolate runs on).
    fn size(&self, id: u32) -> u32 {
        let Some(ty) = self.types.get(self.resolve(id) as usize) else {
            return 0;
        };
        match ty.kind {
            KIND_PTR => 8,
            KIND_INT | KIND_STRUCT | KIND_UNION | KIND_ENUM | KIND_ENUM64 | KIND_FLOAT => {
                ty.size_or_ref
            }
            _ => 0,
        }
    }

    /// Finds member `name` of the struct or union `id`, looking inside anonymous members;
    /// returns its byte offset from the start of `id` and its type.
    fn member(&self, id: u32, name: &str) -> Option<(u32, u32)> {
        let ty = self.types.get(self.resolve(id) as usize)?;
        for member in self.members(ty) {
            if member.bit_offset % 8 != 0 {
                continue;
            }
            let offset = member.bit_offset / 8;
            let member_name = self.string(member.name);
            if member_name == name.as_bytes() {
                return Some((offset, member.ty));
            }
            if member_name.is_empty()
                && let Some((inner, ty)) = self.member(member.ty, name)
            {
                return Some((offset + inner, ty));
            }
        }
        None
    }

    /// Size in bytes of `struct ty`.
    pub fn struct_size(&self, ty: &str) -> Result<u32, BtfError> {
        Ok(self.size(self.struct_id(ty)?))
    }

    /// Byte offset of `path` (a field, or a field of a field …) in `struct ty`, checking that
    /// the last field is `size` bytes.
    pub fn offset_of(&self, ty: &str, path: &[&str], size: u32) -> Result<u32, BtfError> {
        let mut id = self.struct_id(ty)?;
        let mut offset = 0;
        for field in path {
            let (inner, member_ty) = self.member(id, field).ok_or_else(|| BtfError::NoField {
                ty: ty.to_owned(),
                field: path.join("."),
            })?;
            offset += inner;
            id = member_ty;
        }
        let actual = self.size(id);
        if actual != size {
            return Err(BtfError::Size {
                what: format!("{ty}.{}", path.join(".")),
                size: actual,
                expected: size,
            });
        }
        Ok(offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny BTF blob: `struct outer { int a; struct { int *p; }; }` plus a typedef.
    fn sample() -> Vec<u8> {
        let strings = b"\0int\0outer\0a\0p\0t\0".to_vec();
        let mut types: Vec<u32> = Vec::new();
        // 1: int, 4 bytes
        types.extend([1, KIND_INT << 24, 4, 32]);
        // 2: int *
        types.extend([0, KIND_PTR << 24, 1]);
        // 3: anonymous struct { int *p; } (8 bytes)
        types.extend([0, KIND_STRUCT << 24 | 1, 8, 13, 2, 0]);
        // 4: typedef t = anonymous struct
        types.extend([15, KIND_TYPEDEF << 24, 3]);
        // 5: struct outer { int a; <anon> at 64 bits; }
        types.extend([5, KIND_STRUCT << 24 | 2, 16, 11, 1, 0, 0, 4, 64]);
        let type_bytes: Vec<u8> = types.iter().flat_map(|w| w.to_le_bytes()).collect();
        let mut blob = Vec::new();
        blob.extend(0xeb9f_u16.to_le_bytes());
        blob.extend([1, 0]);
        for word in [
            24,
            0,
            type_bytes.len() as u32,
            type_bytes.len() as u32,
            strings.len() as u32,
        ] {
            blob.extend(word.to_le_bytes());
        }
        blob.extend(type_bytes);
        blob.extend(strings);
        blob
    }

    #[test]
    fn finds_fields_through_anonymous_members_and_typedefs() {
        let data = sample();
        let btf = Btf::parse(&data).unwrap();
        assert_eq!(btf.offset_of("outer", &["a"], 4), Ok(0));
        assert_eq!(btf.offset_of("outer", &["p"], 8), Ok(8));
        assert_eq!(
            btf.offset_of("outer", &["a"], 8),
            Err(BtfError::Size {
                what: "outer.a".into(),
                size: 4,
                expected: 8
            })
        );
        assert!(matches!(
            btf.offset_of("outer", &["b"], 4),
            Err(BtfError::NoField { .. })
        ));
        assert!(matches!(
            btf.offset_of("inner", &["a"], 4),
            Err(BtfError::NoStruct(_))
        ));
    }

    #[test]
    fn rejects_what_is_not_btf() {
        assert!(matches!(Btf::parse(b"\x7fELF"), Err(BtfError::Header)));
    }
}
