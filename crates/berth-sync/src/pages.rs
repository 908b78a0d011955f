//! Rendered list pages, kept while the records under them are unchanged.
//!
//! A list answer is a pure function of the stored records of one
//! (connection, object) and the request (cursor, limit, filters, view), so
//! its bytes can be served again as long as the store's record version of
//! that pair has not moved (`Store::record_version`). The version is read
//! before the rows are, so a page is never labelled with a version older
//! than its content is current for; a write that lands while a page renders
//! only makes it render again. Memory is bounded by bytes; the least
//! recently useful pages go first.

use bytes::Bytes;
use quick_cache::Weighter;
use quick_cache::sync::Cache;

/// What the page cache may hold unless configured otherwise.
pub const DEFAULT_BYTES: u64 = 64 * 1024 * 1024;
/// Pages larger than this are rendered every time (a 1,000-record page of
/// raw fields would push out many ordinary ones).
const MAX_PAGE: usize = 4 * 1024 * 1024;

#[derive(Clone)]
struct Page {
    version: u64,
    body: Bytes,
}

#[derive(Clone)]
struct ByBytes;

impl Weighter<String, Page> for ByBytes {
    fn weight(&self, key: &String, val: &Page) -> u64 {
        (key.len() + val.body.len()) as u64 + 64
    }
}

pub struct Pages {
    cache: Option<Cache<String, Page, ByBytes>>,
}

impl Pages {
    /// A cache of at most `max_bytes` (0 turns it off).
    pub fn new(max_bytes: u64) -> Self {
        let cache = (max_bytes > 0).then(|| {
            // quick_cache sizes its tables from an item estimate; pages
            // are ~10-100 KB.
            let items = (max_bytes / (32 * 1024)).clamp(16, 1 << 20) as usize;
            Cache::with_weighter(items, max_bytes, ByBytes)
        });
        Self { cache }
    }

    /// The page stored under `key` if it was rendered at `version`.
    pub fn get(&self, key: &str, version: u64) -> Option<Bytes> {
        let page = self.cache.as_ref()?.get(key)?;
        (page.version == version).then_some(page.body)
    }

    pub fn put(&self, key: String, version: u64, body: Bytes) {
        if let Some(c) = &self.cache
            && body.len() <= MAX_PAGE
        {
            c.insert(key, Page { version, body });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_holds_for_its_version_only() {
        let p = Pages::new(1 << 20);
        p.put("k".into(), 3, Bytes::from_static(b"page"));
        assert_eq!(p.get("k", 3).as_deref(), Some(&b"page"[..]));
        assert_eq!(p.get("k", 4), None, "a newer version is a miss");
        assert_eq!(p.get("other", 3), None);
        let off = Pages::new(0);
        off.put("k".into(), 1, Bytes::from_static(b"x"));
        assert_eq!(off.get("k", 1), None);
    }

    #[test]
    fn memory_stays_bounded() {
        let p = Pages::new(256 * 1024);
        for i in 0..100 {
            p.put(format!("k{i}"), 1, Bytes::from(vec![b'x'; 16 * 1024]));
        }
        let kept = (0..100)
            .filter(|i| p.get(&format!("k{i}"), 1).is_some())
            .count();
        assert!(
            kept > 0 && kept <= 16,
            "kept {kept} pages of 16 KB in 256 KB"
        );
    }
}
