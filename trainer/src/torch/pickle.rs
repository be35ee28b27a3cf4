//! A small, safe unpickler for the subset of Python's pickle protocol that `torch.save` used
//! before PyTorch 1.6 (the "legacy" format torchvision's MobileNetV2 weights are stored in).
//!
//! Nothing is executed: `GLOBAL`/`REDUCE` only build a description ([`Value::Call`]) that the
//! caller interprets, so a hostile file can at worst fail to parse. The maintained pickle crates
//! either reject persistent ids (which torch uses for tensor storages) or only read the newer
//! zip format, hence this module.

use std::collections::HashMap;

/// A decoded pickle value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    /// An integer wider than 64 bits, as little-endian two's complement bytes.
    BigInt(Vec<u8>),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    /// `module.name`, as referenced by GLOBAL / STACK_GLOBAL.
    Global(String, String),
    /// `callable(*args)` as requested by REDUCE or NEWOBJ; `state` is what BUILD attached.
    Call {
        callable: Box<Value>,
        args: Vec<Value>,
        state: Option<Box<Value>>,
    },
    /// A persistent id: torch puts storage descriptors here.
    Persistent(Box<Value>),
}

impl Value {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Bool(b) => Some(i64::from(*b)),
            _ => None,
        }
    }

    pub fn as_tuple(&self) -> Option<&[Value]> {
        match self {
            Value::Tuple(v) | Value::List(v) => Some(v),
            _ => None,
        }
    }

    /// Whether this is a reference to `module.name`.
    pub fn is_global(&self, module: &str, name: &str) -> bool {
        matches!(self, Value::Global(m, n) if m == module && n == name)
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PickleError {
    #[error("pickle ends unexpectedly at byte {0}")]
    Eof(usize),
    #[error("unsupported pickle opcode 0x{op:02x} at byte {at}")]
    Opcode { op: u8, at: usize },
    #[error("malformed pickle at byte {at}: {what}")]
    Malformed { at: usize, what: &'static str },
}

enum Item {
    Mark,
    Val(Value),
}

/// Reads one pickle starting at `*pos`, advancing `*pos` past its STOP opcode.
pub fn read(data: &[u8], pos: &mut usize) -> Result<Value, PickleError> {
    let mut stack: Vec<Item> = Vec::new();
    let mut memo: HashMap<u32, Value> = HashMap::new();
    let mut p = *pos;

    macro_rules! take {
        ($n:expr) => {{
            let n: usize = $n;
            let end = p
                .checked_add(n)
                .filter(|&e| e <= data.len())
                .ok_or(PickleError::Eof(p))?;
            let s = &data[p..end];
            p = end;
            s
        }};
    }
    macro_rules! bad {
        ($what:expr) => {
            PickleError::Malformed { at: p, what: $what }
        };
    }
    fn pop(stack: &mut Vec<Item>, at: usize) -> Result<Value, PickleError> {
        match stack.pop() {
            Some(Item::Val(v)) => Ok(v),
            _ => Err(PickleError::Malformed {
                at,
                what: "stack underflow",
            }),
        }
    }
    fn pop_mark(stack: &mut Vec<Item>, at: usize) -> Result<Vec<Value>, PickleError> {
        let mark =
            stack
                .iter()
                .rposition(|i| matches!(i, Item::Mark))
                .ok_or(PickleError::Malformed {
                    at,
                    what: "no MARK",
                })?;
        let items = stack.split_off(mark + 1);
        stack.pop();
        Ok(items
            .into_iter()
            .map(|i| match i {
                Item::Val(v) => v,
                Item::Mark => Value::None,
            })
            .collect())
    }
    fn top(stack: &mut [Item], at: usize) -> Result<&mut Value, PickleError> {
        match stack.last_mut() {
            Some(Item::Val(v)) => Ok(v),
            _ => Err(PickleError::Malformed {
                at,
                what: "stack underflow",
            }),
        }
    }
    fn line(data: &[u8], p: &mut usize) -> Result<String, PickleError> {
        let start = *p;
        let len = data[start..]
            .iter()
            .position(|&b| b == b'\n')
            .ok_or(PickleError::Eof(start))?;
        *p = start + len + 1;
        Ok(String::from_utf8_lossy(&data[start..start + len]).into_owned())
    }
    fn utf8(bytes: &[u8], at: usize) -> Result<String, PickleError> {
        String::from_utf8(bytes.to_vec()).map_err(|_| PickleError::Malformed {
            at,
            what: "invalid utf-8",
        })
    }
    fn add_items(target: &mut Value, items: Vec<Value>, at: usize) -> Result<(), PickleError> {
        match target {
            Value::List(list) => list.extend(items),
            // OrderedDict() and friends: REDUCE produced a Call; items land in a Dict state.
            Value::Dict(d) => {
                let mut it = items.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    d.push((k, v));
                }
            }
            _ => {
                return Err(PickleError::Malformed {
                    at,
                    what: "items added to a non-container",
                });
            }
        }
        Ok(())
    }

    loop {
        let at = p;
        let op = *take!(1).first().ok_or(PickleError::Eof(at))?;
        match op {
            0x80 => {
                take!(1); // PROTO
            }
            0x95 => {
                take!(8); // FRAME: the length only helps streaming readers
            }
            b'.' => break, // STOP
            b'(' => stack.push(Item::Mark),
            b'N' => stack.push(Item::Val(Value::None)),
            0x88 => stack.push(Item::Val(Value::Bool(true))),
            0x89 => stack.push(Item::Val(Value::Bool(false))),
            b'J' => {
                let b = take!(4);
                stack.push(Item::Val(Value::Int(i64::from(i32::from_le_bytes([
                    b[0], b[1], b[2], b[3],
                ])))));
            }
            b'K' => {
                let b = take!(1);
                stack.push(Item::Val(Value::Int(i64::from(b[0]))));
            }
            b'M' => {
                let b = take!(2);
                stack.push(Item::Val(Value::Int(i64::from(u16::from_le_bytes([
                    b[0], b[1],
                ])))));
            }
            0x8a => {
                // LONG1: little-endian two's complement of n bytes
                let n = usize::from(take!(1)[0]);
                let b = take!(n);
                if n > 8 {
                    stack.push(Item::Val(Value::BigInt(b.to_vec())));
                    continue;
                }
                let mut buf = if b.last().is_some_and(|&x| x & 0x80 != 0) {
                    [0xffu8; 8]
                } else {
                    [0u8; 8]
                };
                buf[..n].copy_from_slice(b);
                stack.push(Item::Val(Value::Int(i64::from_le_bytes(buf))));
            }
            b'G' => {
                let b = take!(8);
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                stack.push(Item::Val(Value::Float(f64::from_be_bytes(a))));
            }
            b'X' => {
                let b = take!(4);
                let n = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
                let s = utf8(take!(n), at)?;
                stack.push(Item::Val(Value::Str(s)));
            }
            0x8c => {
                let n = usize::from(take!(1)[0]);
                let s = utf8(take!(n), at)?;
                stack.push(Item::Val(Value::Str(s)));
            }
            b'U' => {
                let n = usize::from(take!(1)[0]);
                let s = take!(n).to_vec();
                stack.push(Item::Val(Value::Bytes(s)));
            }
            b'T' => {
                let b = take!(4);
                let n = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
                let s = take!(n).to_vec();
                stack.push(Item::Val(Value::Bytes(s)));
            }
            b'C' => {
                let n = usize::from(take!(1)[0]);
                let s = take!(n).to_vec();
                stack.push(Item::Val(Value::Bytes(s)));
            }
            b')' => stack.push(Item::Val(Value::Tuple(Vec::new()))),
            b']' => stack.push(Item::Val(Value::List(Vec::new()))),
            b'}' => stack.push(Item::Val(Value::Dict(Vec::new()))),
            b't' => {
                let items = pop_mark(&mut stack, at)?;
                stack.push(Item::Val(Value::Tuple(items)));
            }
            b'l' => {
                let items = pop_mark(&mut stack, at)?;
                stack.push(Item::Val(Value::List(items)));
            }
            b'd' => {
                let items = pop_mark(&mut stack, at)?;
                let mut d = Value::Dict(Vec::new());
                add_items(&mut d, items, at)?;
                stack.push(Item::Val(d));
            }
            0x85..=0x87 => {
                let n = usize::from(op - 0x84);
                if stack.len() < n {
                    return Err(bad!("stack underflow"));
                }
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(pop(&mut stack, at)?);
                }
                items.reverse();
                stack.push(Item::Val(Value::Tuple(items)));
            }
            b'a' => {
                let v = pop(&mut stack, at)?;
                add_items(top(&mut stack, at)?, vec![v], at)?;
            }
            b'e' | b'u' => {
                let items = pop_mark(&mut stack, at)?;
                add_items(top(&mut stack, at)?, items, at)?;
            }
            b's' => {
                let v = pop(&mut stack, at)?;
                let k = pop(&mut stack, at)?;
                add_items(top(&mut stack, at)?, vec![k, v], at)?;
            }
            b'c' => {
                let module = line(data, &mut p)?;
                let name = line(data, &mut p)?;
                stack.push(Item::Val(Value::Global(module, name)));
            }
            0x93 => {
                let name = pop(&mut stack, at)?;
                let module = pop(&mut stack, at)?;
                match (module, name) {
                    (Value::Str(m), Value::Str(n)) => stack.push(Item::Val(Value::Global(m, n))),
                    _ => return Err(bad!("STACK_GLOBAL needs two strings")),
                }
            }
            b'R' | 0x81 => {
                let args = pop(&mut stack, at)?;
                let callable = pop(&mut stack, at)?;
                let args = match args {
                    Value::Tuple(a) => a,
                    _ => return Err(bad!("REDUCE arguments are not a tuple")),
                };
                // Dict subclasses are materialised as dicts so SETITEMS can fill them.
                let v = if callable.is_global("collections", "OrderedDict") && args.is_empty() {
                    Value::Dict(Vec::new())
                } else {
                    Value::Call {
                        callable: Box::new(callable),
                        args,
                        state: None,
                    }
                };
                stack.push(Item::Val(v));
            }
            b'b' => {
                let state = pop(&mut stack, at)?;
                if let Value::Call { state: s, .. } = top(&mut stack, at)? {
                    *s = Some(Box::new(state));
                }
                // BUILD on a dict sets attributes such as `_metadata`; weights do not need them.
            }
            b'Q' => {
                let pid = pop(&mut stack, at)?;
                stack.push(Item::Val(Value::Persistent(Box::new(pid))));
            }
            b'q' => {
                let idx = u32::from(take!(1)[0]);
                let v = top(&mut stack, at)?.clone();
                memo.insert(idx, v);
            }
            b'r' => {
                let b = take!(4);
                let idx = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                let v = top(&mut stack, at)?.clone();
                memo.insert(idx, v);
            }
            0x94 => {
                let idx = u32::try_from(memo.len()).map_err(|_| bad!("memo overflow"))?;
                let v = top(&mut stack, at)?.clone();
                memo.insert(idx, v);
            }
            b'h' => {
                let idx = u32::from(take!(1)[0]);
                let v = memo
                    .get(&idx)
                    .cloned()
                    .ok_or(bad!("BINGET of unknown memo slot"))?;
                stack.push(Item::Val(v));
            }
            b'j' => {
                let b = take!(4);
                let idx = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                let v = memo
                    .get(&idx)
                    .cloned()
                    .ok_or(bad!("LONG_BINGET of unknown memo slot"))?;
                stack.push(Item::Val(v));
            }
            b'0' => {
                pop(&mut stack, at)?;
            }
            op => return Err(PickleError::Opcode { op, at }),
        }
    }
    *pos = p;
    match stack.pop() {
        Some(Item::Val(v)) => Ok(v),
        _ => Err(PickleError::Malformed {
            at: p,
            what: "empty stack at STOP",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_protocol_2_values() {
        // pickle.dumps({'a': [1, 300, -2, 2**40], 'b': (True, None, 1.5, 'é')}, protocol=2)
        let data: &[u8] = b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01]q\x02(K\x01M,\x01J\xfe\xff\xff\xff\x8a\x06\x00\x00\x00\x00\x00\x01eX\x01\x00\x00\x00bq\x03(\x88NG?\xf8\x00\x00\x00\x00\x00\x00X\x02\x00\x00\x00\xc3\xa9q\x04tq\x05u.";
        let mut pos = 0;
        let v = read(data, &mut pos).unwrap();
        assert_eq!(pos, data.len());
        let Value::Dict(items) = v else {
            panic!("not a dict: {v:?}")
        };
        assert_eq!(items[0].0, Value::Str("a".into()));
        assert_eq!(
            items[0].1,
            Value::List(vec![
                Value::Int(1),
                Value::Int(300),
                Value::Int(-2),
                Value::Int(1 << 40)
            ])
        );
        assert_eq!(
            items[1].1,
            Value::Tuple(vec![
                Value::Bool(true),
                Value::None,
                Value::Float(1.5),
                Value::Str("é".into())
            ])
        );
    }

    #[test]
    fn globals_reduce_and_persistent_ids_are_described_not_run() {
        // c__builtin__\nsetattr\n ( X'x' ) Q R .  — a persistent id and a call, never executed
        let data: &[u8] = b"\x80\x02c__builtin__\nsetattr\nX\x01\x00\x00\x00xQ\x85R.";
        let v = read(data, &mut 0).unwrap();
        match v {
            Value::Call { callable, args, .. } => {
                assert!(callable.is_global("__builtin__", "setattr"));
                assert_eq!(
                    args,
                    vec![Value::Persistent(Box::new(Value::Str("x".into())))]
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn truncated_and_unknown_input_fail_cleanly() {
        assert!(matches!(
            read(b"\x80\x02]q\x00(K\x01", &mut 0),
            Err(PickleError::Eof(_))
        ));
        assert!(matches!(
            read(b"\x80\x02\xff.", &mut 0),
            Err(PickleError::Opcode { op: 0xff, .. })
        ));
        assert!(read(b"", &mut 0).is_err());
        assert!(read(b"h\x07.", &mut 0).is_err());
        assert!(read(b"a.", &mut 0).is_err());
    }
}
