//! A minimal reader of kernel BTF: just enough to find a struct member's offset
//! and whether a function or a BTF tracepoint exists.
//!
//! aya-obj's BTF lookups are crate-private, and vpm needs module BTF too
//! (`/sys/kernel/btf/<module>`), which is *split* BTF: its type ids and string
//! offsets continue those of the base (`vmlinux`). [`Btf::parse`] reads a base,
//! [`Btf::parse_split`] a module on top of one.
//!
//! Layout (linux/btf.h): a header (magic `0xeb9f`, version, flags, `hdr_len`,
//! then offsets and lengths of the type and string sections, relative to the end
//! of the header), type records of 12 bytes (`name_off`, `info`, `size`/`type`)
//! each followed by kind-specific data, and NUL-terminated strings.
//!
//! Pure: parsing takes bytes; [`Btf::read`] is the only function touching files.

use std::path::{Path, PathBuf};
use std::sync::Arc;

/// BTF magic number.
const MAGIC: u16 = 0xeb9f;
/// Size of `struct btf_type`.
const TYPE_LEN: usize = 12;

/// BTF kinds vpm looks at (`BTF_KIND_*`).
mod kind {
    pub const INT: u32 = 1;
    pub const PTR: u32 = 2;
    pub const ARRAY: u32 = 3;
    pub const STRUCT: u32 = 4;
    pub const UNION: u32 = 5;
    pub const ENUM: u32 = 6;
    pub const FWD: u32 = 7;
    pub const TYPEDEF: u32 = 8;
    pub const VOLATILE: u32 = 9;
    pub const CONST: u32 = 10;
    pub const RESTRICT: u32 = 11;
    pub const FUNC: u32 = 12;
    pub const FUNC_PROTO: u32 = 13;
    pub const VAR: u32 = 14;
    pub const DATASEC: u32 = 15;
    pub const FLOAT: u32 = 16;
    pub const DECL_TAG: u32 = 17;
    pub const TYPE_TAG: u32 = 18;
    pub const ENUM64: u32 = 19;
}

/// Errors reading BTF.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    /// The file could not be read.
    #[error("cannot read BTF from {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The bytes are not BTF vpm can read.
    #[error("malformed BTF ({what}); the kernel needs CONFIG_DEBUG_INFO_BTF")]
    Malformed {
        /// What is wrong.
        what: &'static str,
    },
    /// A type record of a kind this reader does not know (a newer kernel).
    #[error("unknown BTF kind {kind} at type id {id}")]
    UnknownKind {
        /// The kind number.
        kind: u32,
        /// The type id.
        id: u32,
    },
}

/// Where a struct member lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    /// Offset from the start of the outermost struct, in bits.
    pub bit_offset: u32,
    /// Type id of the member.
    pub type_id: u32,
}

impl Member {
    /// The offset in bytes, if the member starts on a byte boundary.
    pub fn byte_offset(&self) -> Option<u32> {
        self.bit_offset
            .is_multiple_of(8)
            .then_some(self.bit_offset / 8)
    }
}

/// One type record.
#[derive(Clone, Copy, Debug)]
struct TypeRecord {
    /// Byte offset of the record in `Btf::data`.
    at: usize,
    kind: u32,
    vlen: u32,
    kind_flag: bool,
    name_off: u32,
    size_or_type: u32,
}

/// Parsed BTF: a base (`vmlinux`) or a split object (a module) over its base.
#[derive(Debug)]
pub struct Btf {
    data: Vec<u8>,
    /// `[start, end)` of the string section in `data`.
    strings: (usize, usize),
    types: Vec<TypeRecord>,
    /// Id of `types[0]` (1 for a base; the base's count + 1 for split BTF).
    first_id: u32,
    /// String offsets below this belong to the base.
    first_str: u32,
    base: Option<Arc<Btf>>,
}

fn u16_at(d: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(d.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(d: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(d.get(at..at + 4)?.try_into().ok()?))
}

fn malformed(what: &'static str) -> BtfError {
    BtfError::Malformed { what }
}

/// Bytes of kind-specific data after a type record.
fn trailing_len(kind: u32, vlen: u32, id: u32) -> Result<usize, BtfError> {
    let vlen = vlen as usize;
    Ok(match kind {
        kind::INT | kind::VAR | kind::DECL_TAG => 4,
        kind::ARRAY => 12,
        kind::STRUCT | kind::UNION | kind::DATASEC | kind::ENUM64 => 12 * vlen,
        kind::ENUM | kind::FUNC_PROTO => 8 * vlen,
        kind::PTR
        | kind::FWD
        | kind::TYPEDEF
        | kind::VOLATILE
        | kind::CONST
        | kind::RESTRICT
        | kind::FUNC
        | kind::FLOAT
        | kind::TYPE_TAG => 0,
        _ => return Err(BtfError::UnknownKind { kind, id }),
    })
}

impl Btf {
    /// Parses base BTF (`/sys/kernel/btf/vmlinux`).
    pub fn parse(data: Vec<u8>) -> Result<Self, BtfError> {
        Self::parse_inner(data, None)
    }

    /// Parses split BTF (`/sys/kernel/btf/<module>`) on top of `base`.
    pub fn parse_split(data: Vec<u8>, base: Arc<Btf>) -> Result<Self, BtfError> {
        Self::parse_inner(data, Some(base))
    }

    /// Reads and parses `path`, as split BTF over `base` when one is given.
    pub fn read(path: &Path, base: Option<Arc<Btf>>) -> Result<Self, BtfError> {
        let data = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse_inner(data, base)
    }

    fn parse_inner(data: Vec<u8>, base: Option<Arc<Btf>>) -> Result<Self, BtfError> {
        if u16_at(&data, 0) != Some(MAGIC) {
            return Err(malformed("bad magic (big-endian or not BTF)"));
        }
        let field = |at| u32_at(&data, at).ok_or_else(|| malformed("truncated header"));
        let hdr_len = field(4)? as usize;
        let (type_off, type_len) = (field(8)? as usize, field(12)? as usize);
        let (str_off, str_len) = (field(16)? as usize, field(20)? as usize);
        let section = |off: usize, len: usize| {
            let start = hdr_len.checked_add(off)?;
            let end = start.checked_add(len)?;
            (end <= data.len()).then_some((start, end))
        };
        let (types_start, types_end) =
            section(type_off, type_len).ok_or_else(|| malformed("type section out of bounds"))?;
        let strings =
            section(str_off, str_len).ok_or_else(|| malformed("string section out of bounds"))?;
        let (first_id, first_str) = match &base {
            Some(b) => (b.next_id(), b.next_str()),
            None => (1, 0),
        };
        let mut types = Vec::new();
        let mut at = types_start;
        while at < types_end {
            let id = first_id.saturating_add(u32::try_from(types.len()).unwrap_or(u32::MAX));
            let (Some(name_off), Some(info), Some(size_or_type)) = (
                u32_at(&data, at),
                u32_at(&data, at + 4),
                u32_at(&data, at + 8),
            ) else {
                return Err(malformed("truncated type record"));
            };
            let kind = (info >> 24) & 0x1f;
            let vlen = info & 0xffff;
            let next = at + TYPE_LEN + trailing_len(kind, vlen, id)?;
            if next > types_end {
                return Err(malformed("type record runs past the type section"));
            }
            types.push(TypeRecord {
                at,
                kind,
                vlen,
                kind_flag: info >> 31 == 1,
                name_off,
                size_or_type,
            });
            at = next;
        }
        Ok(Self {
            data,
            strings,
            types,
            first_id,
            first_str,
            base,
        })
    }

    /// The id the next object's first type would have.
    fn next_id(&self) -> u32 {
        self.first_id
            .saturating_add(u32::try_from(self.types.len()).unwrap_or(u32::MAX))
    }

    /// The string offset the next object's strings start at.
    fn next_str(&self) -> u32 {
        self.first_str
            .saturating_add(u32::try_from(self.strings.1 - self.strings.0).unwrap_or(u32::MAX))
    }

    /// Number of types in this object (not counting the base).
    pub fn len(&self) -> usize {
        self.types.len()
    }

    /// Whether this object has no types.
    pub fn is_empty(&self) -> bool {
        self.types.is_empty()
    }

    /// The string at `off` (in this object or its base).
    fn string(&self, off: u32) -> Option<&[u8]> {
        if off < self.first_str {
            return self.base.as_ref()?.string(off);
        }
        let start = self.strings.0 + (off - self.first_str) as usize;
        let bytes = self.data.get(start..self.strings.1)?;
        let len = bytes.iter().position(|&b| b == 0)?;
        Some(&bytes[..len])
    }

    /// The record and the object holding it for type `id`.
    fn record(&self, id: u32) -> Option<(&Btf, TypeRecord)> {
        if id < self.first_id {
            return self.base.as_ref()?.record(id);
        }
        let rec = *self.types.get((id - self.first_id) as usize)?;
        Some((self, rec))
    }

    /// Id of the first type of kind `kind` named `name`, searching this object
    /// first, then its base.
    fn find(&self, name: &str, kind: u32) -> Option<u32> {
        let own = self.types.iter().position(|t| {
            t.kind == kind && t.name_off != 0 && self.string(t.name_off) == Some(name.as_bytes())
        });
        match own {
            Some(i) => Some(self.first_id + u32::try_from(i).ok()?),
            None => self.base.as_ref()?.find(name, kind),
        }
    }

    /// Whether a function `name` is described (a `BTF_KIND_FUNC`).
    pub fn has_func(&self, name: &str) -> bool {
        self.find(name, kind::FUNC).is_some()
    }

    /// Whether the BTF tracepoint `name` can be attached (`btf_trace_<name>` exists).
    pub fn has_btf_tracepoint(&self, name: &str) -> bool {
        self.find(&format!("btf_trace_{name}"), kind::TYPEDEF)
            .is_some()
    }

    /// Whether a struct `name` is defined (not just declared).
    pub fn has_struct(&self, name: &str) -> bool {
        self.find(name, kind::STRUCT).is_some()
    }

    /// Follows typedefs and qualifiers to the underlying type id.
    fn resolve(&self, mut id: u32) -> Option<u32> {
        for _ in 0..32 {
            let (_, rec) = self.record(id)?;
            match rec.kind {
                kind::TYPEDEF | kind::VOLATILE | kind::CONST | kind::RESTRICT | kind::TYPE_TAG => {
                    id = rec.size_or_type;
                }
                _ => return Some(id),
            }
        }
        None
    }

    /// Member `name` of the struct or union `id`, looking inside anonymous
    /// struct/union members too; offsets relative to `id`'s start.
    fn member_of(&self, id: u32, name: &str, depth: u32) -> Option<Member> {
        if depth > 8 {
            return None;
        }
        let (obj, rec) = self.record(self.resolve(id)?)?;
        if rec.kind != kind::STRUCT && rec.kind != kind::UNION {
            return None;
        }
        let mut anonymous = Vec::new();
        for i in 0..rec.vlen as usize {
            let at = rec.at + TYPE_LEN + 12 * i;
            let name_off = u32_at(&obj.data, at)?;
            let type_id = u32_at(&obj.data, at + 4)?;
            let raw = u32_at(&obj.data, at + 8)?;
            // With kind_flag, the high 8 bits are the bitfield size.
            let bit_offset = if rec.kind_flag {
                raw & 0x00ff_ffff
            } else {
                raw
            };
            if name_off == 0 {
                anonymous.push((type_id, bit_offset));
            } else if self.string(name_off) == Some(name.as_bytes()) {
                return Some(Member {
                    bit_offset,
                    type_id,
                });
            }
        }
        anonymous.into_iter().find_map(|(type_id, base)| {
            let m = self.member_of(type_id, name, depth + 1)?;
            Some(Member {
                bit_offset: base + m.bit_offset,
                ..m
            })
        })
    }

    /// Offset of `path` (members of embedded structs, outermost first) inside
    /// `struct name`: `offset_of("device", &["kobj", "name"])`. `None` if the
    /// struct or a member is missing, or a step is not an embedded struct/union.
    pub fn offset_of(&self, struct_name: &str, path: &[&str]) -> Option<Member> {
        let mut id = self.find(struct_name, kind::STRUCT)?;
        let mut total = 0u32;
        let mut last = None;
        for step in path {
            let m = self.member_of(id, step, 0)?;
            total = total.checked_add(m.bit_offset)?;
            id = m.type_id;
            last = Some(Member {
                bit_offset: total,
                type_id: m.type_id,
            });
        }
        last
    }

    /// Byte offset of `path` inside `struct name` (see [`Btf::offset_of`]).
    pub fn byte_offset_of(&self, struct_name: &str, path: &[&str]) -> Option<u32> {
        self.offset_of(struct_name, path)?.byte_offset()
    }

    /// Whether type `id` is a pointer (after typedefs and qualifiers).
    pub fn is_pointer(&self, id: u32) -> bool {
        self.resolve(id)
            .and_then(|id| self.record(id))
            .is_some_and(|(_, rec)| rec.kind == kind::PTR)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds BTF bytes from type records (already encoded) and a string table.
    fn build(types: &[u8], strings: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC.to_le_bytes());
        out.push(1); // version
        out.push(0); // flags
        out.extend_from_slice(&24u32.to_le_bytes()); // hdr_len
        out.extend_from_slice(&0u32.to_le_bytes()); // type_off
        out.extend_from_slice(&(types.len() as u32).to_le_bytes());
        out.extend_from_slice(&(types.len() as u32).to_le_bytes()); // str_off
        out.extend_from_slice(&(strings.len() as u32).to_le_bytes());
        out.extend_from_slice(types);
        out.extend_from_slice(strings);
        out
    }

    fn ty(out: &mut Vec<u8>, name_off: u32, kind: u32, vlen: u32, kind_flag: bool, size: u32) {
        let info = (u32::from(kind_flag) << 31) | (kind << 24) | vlen;
        for v in [name_off, info, size] {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }

    fn words(out: &mut Vec<u8>, ws: &[u32]) {
        for w in ws {
            out.extend_from_slice(&w.to_le_bytes());
        }
    }

    /// Strings: 0 "", 1 "int", 5 "inner", 11 "a", 13 "b", 15 "outer", 21 "x",
    /// 23 "in", 26 "ptr", 30 "f", 32 "bits".
    const STRINGS: &[u8] = b"\0int\0inner\0a\0b\0outer\0x\0in\0ptr\0f\0bits\0";

    /// A base: 1 int; 2 struct inner {int a; int b;}; 3 const inner;
    /// 4 struct outer {int x; const inner in; int *ptr; union {int bits;}};
    /// 5 int *; 6 union {int bits}; 7 FUNC f; 8 FUNC_PROTO; 9 ENUM(1).
    fn base_bytes() -> Vec<u8> {
        let mut t = Vec::new();
        ty(&mut t, 1, kind::INT, 0, false, 4);
        words(&mut t, &[32]);
        ty(&mut t, 5, kind::STRUCT, 2, false, 8);
        words(&mut t, &[11, 1, 0, 13, 1, 32]);
        ty(&mut t, 0, kind::CONST, 0, false, 2);
        ty(&mut t, 15, kind::STRUCT, 4, false, 32);
        words(&mut t, &[21, 1, 0, 23, 3, 64, 26, 5, 128, 0, 6, 192]);
        ty(&mut t, 0, kind::PTR, 0, false, 1);
        ty(&mut t, 0, kind::UNION, 1, false, 4);
        words(&mut t, &[32, 1, 0]);
        ty(&mut t, 30, kind::FUNC, 0, false, 8);
        ty(&mut t, 0, kind::FUNC_PROTO, 1, false, 1);
        words(&mut t, &[0, 1]);
        ty(&mut t, 0, kind::ENUM, 1, false, 4);
        words(&mut t, &[11, 7]);
        build(&t, STRINGS)
    }

    #[test]
    fn members_of_embedded_structs_add_up() {
        let btf = Btf::parse(base_bytes()).expect("parses");
        assert_eq!(btf.len(), 9);
        assert_eq!(btf.byte_offset_of("outer", &["x"]), Some(0));
        assert_eq!(btf.byte_offset_of("outer", &["in"]), Some(8));
        // Through the `const` qualifier into the embedded struct.
        assert_eq!(btf.byte_offset_of("outer", &["in", "b"]), Some(12));
        assert_eq!(btf.byte_offset_of("inner", &["b"]), Some(4));
        let ptr = btf.offset_of("outer", &["ptr"]).expect("ptr");
        assert_eq!(ptr.byte_offset(), Some(16));
        assert!(btf.is_pointer(ptr.type_id));
        assert!(!btf.is_pointer(btf.offset_of("outer", &["x"]).expect("x").type_id));
        // A member of an anonymous union is found from the outer struct.
        assert_eq!(btf.byte_offset_of("outer", &["bits"]), Some(24));
        assert!(btf.has_func("f"));
        assert!(!btf.has_func("g"));
        assert!(btf.has_struct("inner"));
    }

    #[test]
    fn missing_things_are_none() {
        let btf = Btf::parse(base_bytes()).expect("parses");
        assert_eq!(btf.offset_of("nope", &["x"]), None);
        assert_eq!(btf.offset_of("outer", &["nope"]), None);
        // `x` is an int: no members below it.
        assert_eq!(btf.offset_of("outer", &["x", "a"]), None);
        assert_eq!(btf.offset_of("outer", &[]), None);
        assert!(!btf.has_btf_tracepoint("kvm_pio"));
    }

    #[test]
    fn bitfield_offsets_drop_the_size_bits() {
        // struct bf { int lo:3; int hi:5 } with kind_flag: offsets carry sizes.
        let strings = b"\0int\0bf\0lo\0hi\0";
        let mut t = Vec::new();
        ty(&mut t, 1, kind::INT, 0, false, 4);
        words(&mut t, &[32]);
        ty(&mut t, 5, kind::STRUCT, 2, true, 4);
        words(&mut t, &[8, 1, 3 << 24, 11, 1, (5 << 24) | 3]);
        let btf = Btf::parse(build(&t, strings)).expect("parses");
        let hi = btf.offset_of("bf", &["hi"]).expect("hi");
        assert_eq!(hi.bit_offset, 3);
        assert_eq!(hi.byte_offset(), None);
    }

    #[test]
    fn split_btf_continues_ids_and_strings_of_its_base() {
        let base = Arc::new(Btf::parse(base_bytes()).expect("base"));
        // Module: 10 struct mod {struct outer o; int *p;} with its own strings
        // ("mod", "o", "p") after the base's, using the base's "int"/"outer".
        let mod_strings = b"\0mod\0o\0p\0";
        let s = STRINGS.len() as u32;
        let mut t = Vec::new();
        ty(&mut t, s + 1, kind::STRUCT, 2, false, 40);
        words(&mut t, &[s + 5, 4, 0, s + 7, 5, 256]);
        ty(&mut t, s + 5, kind::FUNC, 0, false, 8);
        let split = Btf::parse_split(build(&t, mod_strings), base).expect("split");
        assert_eq!(split.len(), 2);
        assert_eq!(split.byte_offset_of("mod", &["p"]), Some(32));
        assert_eq!(split.byte_offset_of("mod", &["o", "in", "b"]), Some(12));
        // Base types are found through the split object.
        assert_eq!(split.byte_offset_of("outer", &["ptr"]), Some(16));
        assert!(split.has_func("o"));
        assert!(split.has_func("f"));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(Btf::parse(Vec::new()).is_err());
        assert!(Btf::parse(vec![0x9f, 0xeb, 1, 0]).is_err());
        let mut bytes = base_bytes();
        // A type section longer than the file.
        bytes[12] = 0xff;
        assert!(Btf::parse(bytes).is_err());
        let mut t = Vec::new();
        ty(&mut t, 0, 31, 0, false, 0);
        assert!(matches!(
            Btf::parse(build(&t, b"\0")),
            Err(BtfError::UnknownKind { kind: 31, id: 1 })
        ));
        // Truncated trailing data.
        let mut t = Vec::new();
        ty(&mut t, 0, kind::STRUCT, 3, false, 0);
        assert!(Btf::parse(build(&t, b"\0")).is_err());
    }

    /// The running kernel's BTF (the dev hosts and the lab guest have it).
    #[test]
    fn host_vmlinux_has_the_members_vpm_reads() {
        let path = Path::new("/sys/kernel/btf/vmlinux");
        if !path.exists() {
            eprintln!("skipped: no {}", path.display());
            return;
        }
        let btf = Btf::read(path, None).expect("host BTF parses");
        assert!(btf.len() > 10_000, "{} types", btf.len());
        let kobj = btf
            .byte_offset_of("device", &["kobj"])
            .expect("device.kobj");
        let name = btf
            .byte_offset_of("kobject", &["name"])
            .expect("kobject.name");
        // `name` is the first member of struct kobject on every kernel since 2.6.
        assert_eq!(name, 0);
        let full = btf
            .offset_of("device", &["kobj", "name"])
            .expect("device.kobj.name");
        assert_eq!(full.byte_offset(), Some(kobj + name));
        assert!(btf.is_pointer(full.type_id));
        assert!(btf.byte_offset_of("task_struct", &["flags"]).is_some());
        assert!(btf.has_func("pci_set_power_state") || !btf.has_struct("pci_dev"));
    }
}
