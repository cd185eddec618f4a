//! `ngx.shared.DICT` in Rust: named, capacity-bounded key/value stores shared
//! by every VM and thread of one edge node.
//!
//! Owns the storage and lua-nginx-module's semantics (lazy expiry with
//! millisecond TTLs, LRU eviction with `forcible`, `safe_*` that never evict,
//! lists, the OpenResty error strings). It knows nothing about Lua: the Lua
//! binding lives in `lua_api::shared`.
//!
//! Each dict is one `parking_lot::Mutex` around a hash map plus an intrusive
//! LRU list over a slab, so every operation is O(1) apart from the scans
//! (`flush_expired`, `get_keys`). Sizes are accounted per entry as key bytes +
//! value bytes + a fixed overhead that approximates nginx's rbtree/queue node,
//! so a dict holds roughly as many items as the same `lua_shared_dict` would.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::clock::Clock;
use crate::error::Error;

/// Bytes charged per entry on top of key and value (nginx node headers).
pub const ENTRY_OVERHEAD: usize = 64;
/// Bytes charged per list element on top of its value.
pub const LIST_ITEM_OVERHEAD: usize = 24;
/// The longest key accepted (as in lua-nginx-module).
pub const MAX_KEY_LEN: usize = 65535;

const NIL: usize = usize::MAX;

/// A scalar value stored in a shared dict (numbers and booleans keep their
/// types; strings are byte strings).
#[derive(Debug, Clone, PartialEq)]
pub enum DictValue {
    /// A boolean.
    Bool(bool),
    /// A number (Lua numbers are doubles on LuaJIT).
    Number(f64),
    /// A binary-safe byte string.
    Bytes(Vec<u8>),
}

impl DictValue {
    fn size(&self) -> usize {
        match self {
            DictValue::Bool(_) | DictValue::Number(_) => 8,
            DictValue::Bytes(b) => b.len(),
        }
    }
}

/// Why a dict operation failed. `Display` gives OpenResty's exact strings,
/// which scripts compare against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DictError {
    /// The key is absent or expired.
    #[error("not found")]
    NotFound,
    /// `add` on a live key.
    #[error("exists")]
    Exists,
    /// `incr` on a value that is not a number.
    #[error("not a number")]
    NotANumber,
    /// Not enough room, even after any allowed eviction.
    #[error("no memory")]
    NoMemory,
    /// A list operation on a scalar value.
    #[error("value not a list")]
    NotAList,
    /// A scalar read on a list value.
    #[error("value is a list")]
    IsAList,
    /// The empty string as a key.
    #[error("empty key")]
    EmptyKey,
    /// A key longer than [`MAX_KEY_LEN`].
    #[error("key too long")]
    KeyTooLong,
}

/// How a write treats an existing key and a full dict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetMode {
    /// Always store; evict LRU items when full.
    Set,
    /// Always store; never evict.
    SafeSet,
    /// Store only if the key is absent or expired; evict when full.
    Add,
    /// Like `Add`, never evicting.
    SafeAdd,
    /// Store only if the key is live; evict when full.
    Replace,
}

impl SetMode {
    fn may_evict(self) -> bool {
        !matches!(self, SetMode::SafeSet | SetMode::SafeAdd)
    }
}

/// A value read with [`SharedDict::get`] (live, or also stale).
#[derive(Debug, Clone, PartialEq)]
pub struct Got {
    /// The value.
    pub value: DictValue,
    /// The user flags stored with it.
    pub flags: u32,
    /// Whether it had already expired (only `get_stale` returns those).
    pub stale: bool,
}

#[derive(Debug)]
enum Stored {
    Scalar(DictValue),
    List(VecDeque<DictValue>),
}

#[derive(Debug)]
struct Node {
    key: Box<[u8]>,
    value: Stored,
    /// Expiry in ms since the epoch; 0 = never.
    expires: u64,
    flags: u32,
    size: usize,
    prev: usize,
    next: usize,
}

impl Node {
    fn expired(&self, now: u64) -> bool {
        self.expires != 0 && self.expires <= now
    }
}

#[derive(Debug, Default)]
struct Inner {
    map: HashMap<Box<[u8]>, usize>,
    slab: Vec<Option<Node>>,
    free: Vec<usize>,
    /// Most recently used.
    head: usize,
    /// Least recently used.
    tail: usize,
    used: usize,
}

impl Inner {
    fn new() -> Self {
        Self {
            head: NIL,
            tail: NIL,
            ..Self::default()
        }
    }

    fn node(&self, i: usize) -> Option<&Node> {
        self.slab.get(i).and_then(Option::as_ref)
    }

    fn node_mut(&mut self, i: usize) -> Option<&mut Node> {
        self.slab.get_mut(i).and_then(Option::as_mut)
    }

    fn unlink(&mut self, i: usize) {
        let (prev, next) = match self.node(i) {
            Some(n) => (n.prev, n.next),
            None => return,
        };
        match self.node_mut(prev) {
            Some(p) => p.next = next,
            None => self.head = next,
        }
        match self.node_mut(next) {
            Some(n) => n.prev = prev,
            None => self.tail = prev,
        }
    }

    fn link_front(&mut self, i: usize) {
        let old_head = self.head;
        if let Some(n) = self.node_mut(i) {
            n.prev = NIL;
            n.next = old_head;
        }
        match self.node_mut(old_head) {
            Some(h) => h.prev = i,
            None => self.tail = i,
        }
        self.head = i;
    }

    fn touch(&mut self, i: usize) {
        if self.head != i {
            self.unlink(i);
            self.link_front(i);
        }
    }

    fn insert(&mut self, key: &[u8], value: Stored, expires: u64, flags: u32, size: usize) {
        let node = Node {
            key: key.into(),
            value,
            expires,
            flags,
            size,
            prev: NIL,
            next: NIL,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.slab[i] = Some(node);
                i
            }
            None => {
                self.slab.push(Some(node));
                self.slab.len() - 1
            }
        };
        self.map.insert(key.into(), i);
        self.used += size;
        self.link_front(i);
    }

    fn remove(&mut self, i: usize) {
        self.unlink(i);
        if let Some(node) = self.slab.get_mut(i).and_then(Option::take) {
            self.map.remove(&node.key);
            self.used -= node.size;
            self.free.push(i);
        }
    }

    /// Looks a key up, reporting whether it is expired.
    fn find(&self, key: &[u8], now: u64) -> Option<(usize, bool)> {
        let i = *self.map.get(key)?;
        let expired = self.node(i)?.expired(now);
        Some((i, expired))
    }

    /// Drops up to two expired items from the LRU tail, as nginx does before
    /// every write, so expired items do not pile up.
    fn expire_tail(&mut self, now: u64) {
        for _ in 0..2 {
            let t = self.tail;
            match self.node(t) {
                Some(n) if n.expired(now) => self.remove(t),
                _ => break,
            }
        }
    }

    /// Makes room for `need` more bytes. `keep` is never evicted. Returns
    /// whether a live item had to be evicted (`forcible`).
    fn make_room(
        &mut self,
        capacity: usize,
        need: usize,
        keep: usize,
        may_evict: bool,
        now: u64,
    ) -> Result<bool, (DictError, bool)> {
        if need > capacity {
            return Err((DictError::NoMemory, false));
        }
        let mut forcible = false;
        let mut cursor = self.tail;
        while self.used + need > capacity {
            let Some(node) = self.node(cursor) else {
                return Err((DictError::NoMemory, forcible));
            };
            let prev = node.prev;
            if cursor != keep {
                let expired = node.expired(now);
                if !expired && !may_evict {
                    return Err((DictError::NoMemory, forcible));
                }
                forcible |= !expired;
                self.remove(cursor);
            }
            cursor = prev;
        }
        Ok(forcible)
    }
}

fn check_key(key: &[u8]) -> Result<(), DictError> {
    if key.is_empty() {
        Err(DictError::EmptyKey)
    } else if key.len() > MAX_KEY_LEN {
        Err(DictError::KeyTooLong)
    } else {
        Ok(())
    }
}

fn expiry(now: u64, exptime: f64) -> u64 {
    if exptime > 0.0 {
        // At least 1 ms in the future so a tiny TTL still expires later.
        now.saturating_add(((exptime * 1000.0).round() as u64).max(1))
    } else {
        0
    }
}

/// One named shared dict.
pub struct SharedDict {
    name: String,
    capacity: usize,
    clock: Arc<dyn Clock>,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for SharedDict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedDict")
            .field("name", &self.name)
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

/// Result of a successful write: whether live items were evicted.
pub type Forcible = bool;

impl SharedDict {
    /// A new empty dict of `capacity` bytes reading time from `clock`.
    pub fn new(name: impl Into<String>, capacity: usize, clock: Arc<dyn Clock>) -> Self {
        Self {
            name: name.into(),
            capacity,
            clock,
            inner: Mutex::new(Inner::new()),
        }
    }

    /// The dict's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The capacity in bytes, as declared.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Bytes not yet used by entries.
    pub fn free_space(&self) -> usize {
        self.capacity.saturating_sub(self.inner.lock().used)
    }

    /// Reads a live value (`get`), or also an expired one not yet removed
    /// (`get_stale`, when `stale` is true). Live reads count as a use for LRU.
    pub fn get(&self, key: &[u8], stale: bool) -> Result<Option<Got>, DictError> {
        check_key(key)?;
        let now = self.clock.now_ms();
        let mut inner = self.inner.lock();
        let Some((i, expired)) = inner.find(key, now) else {
            return Ok(None);
        };
        if expired && !stale {
            return Ok(None);
        }
        if !expired {
            inner.touch(i);
        }
        let Some(node) = inner.node(i) else {
            return Ok(None);
        };
        match &node.value {
            Stored::Scalar(v) => Ok(Some(Got {
                value: v.clone(),
                flags: node.flags,
                stale: expired,
            })),
            Stored::List(_) => Err(DictError::IsAList),
        }
    }

    /// Stores `value` (or deletes the key when `None`) with a TTL in seconds
    /// (0 = never expires) under `mode`'s rules. On failure the error comes
    /// with `forcible`.
    pub fn store(
        &self,
        key: &[u8],
        value: Option<DictValue>,
        exptime: f64,
        flags: u32,
        mode: SetMode,
    ) -> Result<Forcible, (DictError, Forcible)> {
        check_key(key).map_err(|e| (e, false))?;
        let now = self.clock.now_ms();
        let mut inner = self.inner.lock();
        let found = inner.find(key, now);
        match (mode, found) {
            (SetMode::Add | SetMode::SafeAdd, Some((_, false))) => {
                return Err((DictError::Exists, false));
            }
            (SetMode::Replace, None | Some((_, true))) => {
                return Err((DictError::NotFound, false));
            }
            _ => {}
        }
        let Some(value) = value else {
            if let Some((i, _)) = found {
                inner.remove(i);
            }
            return Ok(false);
        };
        let size = ENTRY_OVERHEAD + key.len() + value.size();
        let expires = expiry(now, exptime);
        if let Some((i, _)) = found {
            // Update in place. As in nginx, a failed write loses the old value.
            let old_size = inner.node(i).map_or(0, |n| n.size);
            if size > self.capacity {
                inner.remove(i);
                return Err((DictError::NoMemory, false));
            }
            inner.touch(i);
            let mut forcible = false;
            if size > old_size {
                match inner.make_room(self.capacity, size - old_size, i, mode.may_evict(), now) {
                    Ok(f) => forcible = f,
                    Err(e) => {
                        inner.remove(i);
                        return Err(e);
                    }
                }
            }
            if let Some(node) = inner.node_mut(i) {
                node.value = Stored::Scalar(value);
                node.expires = expires;
                node.flags = flags;
                node.size = size;
            }
            inner.used = inner.used - old_size + size;
            return Ok(forcible);
        }
        inner.expire_tail(now);
        let forcible = inner.make_room(self.capacity, size, NIL, mode.may_evict(), now)?;
        inner.insert(key, Stored::Scalar(value), expires, flags, size);
        Ok(forcible)
    }

    /// Adds `delta` to a number. A missing or expired key is created as
    /// `init + delta` with `init_ttl` when `init` is given, else `NotFound`.
    /// An existing key keeps its TTL.
    pub fn incr(
        &self,
        key: &[u8],
        delta: f64,
        init: Option<f64>,
        init_ttl: f64,
    ) -> Result<(f64, Forcible), DictError> {
        check_key(key)?;
        let now = self.clock.now_ms();
        let mut inner = self.inner.lock();
        match inner.find(key, now) {
            Some((i, false)) => {
                inner.touch(i);
                let node = inner.node_mut(i).ok_or(DictError::NotFound)?;
                match &mut node.value {
                    Stored::Scalar(DictValue::Number(n)) => {
                        *n += delta;
                        Ok((*n, false))
                    }
                    _ => Err(DictError::NotANumber),
                }
            }
            found => {
                let Some(init) = init else {
                    return Err(DictError::NotFound);
                };
                if let Some((i, _)) = found {
                    inner.remove(i);
                }
                inner.expire_tail(now);
                let value = init + delta;
                let size = ENTRY_OVERHEAD + key.len() + 8;
                let forcible = inner
                    .make_room(self.capacity, size, NIL, true, now)
                    .map_err(|(e, _)| e)?;
                inner.insert(
                    key,
                    Stored::Scalar(DictValue::Number(value)),
                    expiry(now, init_ttl),
                    0,
                    size,
                );
                Ok((value, forcible))
            }
        }
    }

    /// Removes a key.
    pub fn delete(&self, key: &[u8]) -> Result<(), DictError> {
        self.store(key, None, 0.0, 0, SetMode::Set)
            .map(|_| ())
            .map_err(|(e, _)| e)
    }

    /// Sets a live key's TTL in seconds (0 = never expires).
    pub fn expire(&self, key: &[u8], exptime: f64) -> Result<(), DictError> {
        check_key(key)?;
        let now = self.clock.now_ms();
        let mut inner = self.inner.lock();
        match inner.find(key, now) {
            Some((i, false)) => {
                if let Some(node) = inner.node_mut(i) {
                    node.expires = expiry(now, exptime);
                }
                Ok(())
            }
            _ => Err(DictError::NotFound),
        }
    }

    /// Seconds left before a live key expires (millisecond resolution), 0 for
    /// a key that never expires.
    pub fn ttl(&self, key: &[u8]) -> Result<f64, DictError> {
        check_key(key)?;
        let now = self.clock.now_ms();
        let inner = self.inner.lock();
        match inner.find(key, now) {
            Some((i, false)) => {
                let expires = inner.node(i).map_or(0, |n| n.expires);
                if expires == 0 {
                    Ok(0.0)
                } else {
                    Ok((expires - now) as f64 / 1000.0)
                }
            }
            _ => Err(DictError::NotFound),
        }
    }

    /// Marks every item expired (they stay readable by `get_stale` until
    /// removed), as `flush_all` does.
    pub fn flush_all(&self) {
        let mut inner = self.inner.lock();
        for node in inner.slab.iter_mut().flatten() {
            node.expires = 1;
        }
    }

    /// Removes expired items, at most `max` of them (0 = all); returns how
    /// many were removed.
    pub fn flush_expired(&self, max: usize) -> usize {
        let now = self.clock.now_ms();
        let mut inner = self.inner.lock();
        let expired: Vec<usize> = inner
            .slab
            .iter()
            .enumerate()
            .filter_map(|(i, n)| n.as_ref().filter(|n| n.expired(now)).map(|_| i))
            .take(if max == 0 { usize::MAX } else { max })
            .collect();
        for &i in &expired {
            inner.remove(i);
        }
        expired.len()
    }

    /// Live keys, at most `max` of them (0 = all).
    pub fn keys(&self, max: usize) -> Vec<Vec<u8>> {
        let now = self.clock.now_ms();
        let inner = self.inner.lock();
        inner
            .slab
            .iter()
            .flatten()
            .filter(|n| !n.expired(now))
            .take(if max == 0 { usize::MAX } else { max })
            .map(|n| n.key.to_vec())
            .collect()
    }

    /// Pushes onto the head (`front`) or tail of a list, creating it when the
    /// key is missing or expired; returns the new length.
    pub fn push(&self, key: &[u8], value: DictValue, front: bool) -> Result<usize, DictError> {
        check_key(key)?;
        if matches!(value, DictValue::Bool(_)) {
            return Err(DictError::NotAList);
        }
        let now = self.clock.now_ms();
        let mut inner = self.inner.lock();
        let item_size = LIST_ITEM_OVERHEAD + value.size();
        match inner.find(key, now) {
            Some((i, false)) => {
                match inner.node(i).map(|n| &n.value) {
                    Some(Stored::List(_)) => {}
                    _ => return Err(DictError::NotAList),
                }
                inner.touch(i);
                inner.expire_tail(now);
                inner
                    .make_room(self.capacity, item_size, i, true, now)
                    .map_err(|(e, _)| e)?;
                inner.used += item_size;
                let node = inner.node_mut(i).ok_or(DictError::NotFound)?;
                node.size += item_size;
                let Stored::List(list) = &mut node.value else {
                    return Err(DictError::NotAList);
                };
                if front {
                    list.push_front(value);
                } else {
                    list.push_back(value);
                }
                Ok(list.len())
            }
            found => {
                if let Some((i, _)) = found {
                    inner.remove(i);
                }
                inner.expire_tail(now);
                let size = ENTRY_OVERHEAD + key.len() + item_size;
                inner
                    .make_room(self.capacity, size, NIL, true, now)
                    .map_err(|(e, _)| e)?;
                inner.insert(key, Stored::List(VecDeque::from([value])), 0, 0, size);
                Ok(1)
            }
        }
    }

    /// Pops from the head (`front`) or tail of a list; `None` when the key is
    /// missing. An emptied list is removed.
    pub fn pop(&self, key: &[u8], front: bool) -> Result<Option<DictValue>, DictError> {
        check_key(key)?;
        let now = self.clock.now_ms();
        let mut inner = self.inner.lock();
        let Some((i, false)) = inner.find(key, now) else {
            return Ok(None);
        };
        let node = inner.node_mut(i).ok_or(DictError::NotFound)?;
        let Stored::List(list) = &mut node.value else {
            return Err(DictError::NotAList);
        };
        let value = if front {
            list.pop_front()
        } else {
            list.pop_back()
        };
        let now_empty = list.is_empty();
        let freed = value.as_ref().map_or(0, |v| LIST_ITEM_OVERHEAD + v.size());
        node.size -= freed;
        inner.used -= freed;
        if now_empty {
            inner.remove(i);
        }
        Ok(value)
    }

    /// The length of a list (0 when the key is missing).
    pub fn llen(&self, key: &[u8]) -> Result<usize, DictError> {
        check_key(key)?;
        let now = self.clock.now_ms();
        let inner = self.inner.lock();
        let Some((i, false)) = inner.find(key, now) else {
            return Ok(0);
        };
        match inner.node(i).map(|n| &n.value) {
            Some(Stored::List(list)) => Ok(list.len()),
            _ => Err(DictError::NotAList),
        }
    }
}

/// All the shared dicts of one edge node, by name. Cheap to clone (an `Arc`
/// inside); every VM of the node holds the same one.
#[derive(Debug, Clone, Default)]
pub struct SharedDicts {
    dicts: Arc<HashMap<String, Arc<SharedDict>>>,
}

impl SharedDicts {
    /// Declares dicts from `(name, capacity in bytes)` pairs, all reading time
    /// from `clock`.
    pub fn new<I, S>(decls: I, clock: Arc<dyn Clock>) -> Result<Self, Error>
    where
        I: IntoIterator<Item = (S, usize)>,
        S: Into<String>,
    {
        let mut dicts = HashMap::new();
        for (name, capacity) in decls {
            let name = name.into();
            if name.is_empty() {
                return Err(Error::Config("shared dict with an empty name".into()));
            }
            let dict = Arc::new(SharedDict::new(name.clone(), capacity, clock.clone()));
            if dicts.insert(name.clone(), dict).is_some() {
                return Err(Error::Config(format!(
                    "shared dict {name:?} declared twice"
                )));
            }
        }
        Ok(Self {
            dicts: Arc::new(dicts),
        })
    }

    /// The dict of that name.
    pub fn get(&self, name: &str) -> Option<&Arc<SharedDict>> {
        self.dicts.get(name)
    }

    /// Every dict, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<SharedDict>> {
        self.dicts.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use std::time::Duration;

    /// `used` must equal the sum of live node sizes, the LRU list must hold
    /// exactly the mapped nodes, and `used` never passes the capacity.
    fn check_invariants(d: &SharedDict) {
        let inner = d.inner.lock();
        let sum: usize = inner.slab.iter().flatten().map(|n| n.size).sum();
        assert_eq!(sum, inner.used);
        assert!(inner.used <= d.capacity);
        let mut seen = 0;
        let mut cur = inner.head;
        let mut prev = NIL;
        while let Some(n) = inner.node(cur) {
            assert_eq!(n.prev, prev);
            assert_eq!(inner.map.get(&n.key), Some(&cur));
            prev = cur;
            cur = n.next;
            seen += 1;
        }
        assert_eq!(inner.tail, prev);
        assert_eq!(seen, inner.map.len());
    }

    #[test]
    fn random_operations_keep_accounting_exact() {
        let clock = ManualClock::new(Duration::from_secs(1_000_000));
        let d = SharedDict::new("t", 2_000, clock.clone());
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..20_000 {
            let r = next();
            let key = format!("k{}", r % 40);
            let key = key.as_bytes();
            let len = usize::try_from(next() % 120).unwrap_or(0);
            let ttl = if r % 7 == 0 { 0.5 } else { 0.0 };
            let _ = match (r >> 8) % 10 {
                0 => d
                    .store(
                        key,
                        Some(DictValue::Bytes(vec![1; len])),
                        ttl,
                        0,
                        SetMode::Set,
                    )
                    .map(|_| ())
                    .map_err(|(e, _)| e),
                1 => d
                    .store(key, Some(DictValue::Number(1.0)), ttl, 0, SetMode::SafeAdd)
                    .map(|_| ())
                    .map_err(|(e, _)| e),
                2 => d.incr(key, 1.0, Some(0.0), ttl).map(|_| ()),
                3 => d
                    .push(key, DictValue::Bytes(vec![2; len]), r % 2 == 0)
                    .map(|_| ()),
                4 => d.pop(key, r % 2 == 0).map(|_| ()),
                5 => d.delete(key),
                6 => d
                    .store(key, Some(DictValue::Bool(true)), 0.0, 0, SetMode::Replace)
                    .map(|_| ())
                    .map_err(|(e, _)| e),
                7 => d.get(key, false).map(|_| ()),
                8 => {
                    clock.advance(Duration::from_millis(100));
                    Ok(())
                }
                _ => {
                    d.flush_expired(3);
                    Ok(())
                }
            };
            check_invariants(&d);
        }
    }
}
