//! `ns.tcp.stream`: the userdata a callback sees as `payload.data`.
//!
//! A stream is an immutable window over bytes owned by Rust (not counted in the Lua memory
//! cap), so `split` is zero-copy. Indices follow `string.sub`/`string.byte`: 1-based, negative
//! counts from the end.

use std::sync::Arc;

use mlua::{MetaMethod, MultiValue, UserData, UserDataMethods, Value, Variadic};

/// Registry name of the original `string.find`, saved before the script can replace it.
pub(super) const STRING_FIND: &str = "nsemu.string.find";

/// Bytes `buf[start..end]`.
#[derive(Debug, Clone)]
pub(super) struct Stream {
    buf: Arc<Vec<u8>>,
    start: usize,
    end: usize,
}

// === impl Stream ===

impl Stream {
    pub(super) fn new(bytes: Vec<u8>) -> Stream {
        let end = bytes.len();
        Stream {
            buf: Arc::new(bytes),
            start: 0,
            end,
        }
    }

    pub(super) fn bytes(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    fn len(&self) -> usize {
        self.end - self.start
    }

    fn window(&self, from: usize, to: usize) -> Stream {
        Stream {
            buf: self.buf.clone(),
            start: self.start + from,
            end: self.start + to,
        }
    }

    /// The 0-based half-open range `string.sub(s, i, j)` selects, or `None` when it is empty.
    fn range(&self, i: i64, j: i64) -> Option<(usize, usize)> {
        let len = self.len() as i64;
        let i = relative(i, len).max(1);
        let j = relative(j, len).min(len);
        (i <= j).then(|| ((i - 1) as usize, j as usize))
    }
}

/// Lua's `posrelat`: a negative position counts from the end; too negative becomes 0.
fn relative(pos: i64, len: i64) -> i64 {
    if pos >= 0 {
        pos
    } else if pos.unsigned_abs() > len as u64 {
        0
    } else {
        len + pos + 1
    }
}

impl UserData for Stream {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method("len", |_, this, ()| Ok(this.len()));
        methods.add_meta_method(MetaMethod::Len, |_, this, ()| Ok(this.len()));
        methods.add_meta_method(MetaMethod::ToString, |lua, this, ()| {
            lua.create_string(this.bytes())
        });
        methods.add_meta_function(MetaMethod::Concat, |lua, (a, b): (Value, Value)| {
            let mut out = bytes_of(&a)?;
            out.extend_from_slice(&bytes_of(&b)?);
            lua.create_string(out)
        });
        methods.add_method("sub", |lua, this, (i, j): (i64, Option<i64>)| {
            let bytes = match this.range(i, j.unwrap_or(-1)) {
                Some((a, b)) => &this.bytes()[a..b],
                None => &[][..],
            };
            lua.create_string(bytes)
        });
        methods.add_method("byte", |_, this, (i, j): (Option<i64>, Option<i64>)| {
            let i = i.unwrap_or(1);
            let out: Variadic<u8> = match this.range(i, j.unwrap_or(i)) {
                Some((a, b)) => this.bytes()[a..b].iter().copied().collect(),
                None => Variadic::new(),
            };
            Ok(out)
        });
        methods.add_method("find", |lua, this, args: MultiValue| {
            let find: mlua::Function = lua.named_registry_value(STRING_FIND)?;
            let mut call = MultiValue::new();
            call.push_back(Value::String(lua.create_string(this.bytes())?));
            call.extend(args);
            find.call::<MultiValue>(call)
        });
        methods.add_method("split", |_, this, n: i64| {
            if n < 0 {
                return Err(mlua::Error::runtime("split: negative length"));
            }
            let n = (n as u64).min(this.len() as u64) as usize;
            Ok((this.window(0, n), this.window(n, this.len())))
        });
    }
}

/// The bytes of a stream or a string (numbers as Lua prints them), for `..`, `ns.send` and `hold`.
pub(super) fn bytes_of(value: &Value) -> mlua::Result<Vec<u8>> {
    match value {
        Value::String(s) => Ok(s.as_bytes().to_vec()),
        Value::Integer(i) => Ok(i.to_string().into_bytes()),
        Value::Number(n) if n.fract() == 0.0 && n.abs() < 1e15 => {
            Ok((*n as i64).to_string().into_bytes())
        }
        Value::Number(n) => Ok(n.to_string().into_bytes()),
        Value::UserData(ud) => match ud.borrow::<Stream>() {
            Ok(stream) => Ok(stream.bytes().to_vec()),
            Err(_) => Err(mlua::Error::runtime("expected a stream or a string")),
        },
        other => Err(mlua::Error::runtime(format!(
            "expected a stream or a string, got {}",
            other.type_name()
        ))),
    }
}
