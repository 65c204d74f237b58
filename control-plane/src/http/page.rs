//! Paging and filtering of every REST list: `?limit=` (default [`DEFAULT_LIMIT`], at most
//! [`MAX_LIMIT`]) and `?cursor=` (opaque: the URL-safe base64 of the sort key of the last
//! item of the previous page). A list stays a JSON array; when more items remain, the
//! answer carries the next page's cursor in `X-Next-Cursor` and a `Link: <...>; rel="next"`.

use axum::http::{HeaderMap, HeaderValue, header};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::de::DeserializeOwned;

use crate::error::ServiceError;

/// Items per page when `?limit=` is absent.
pub const DEFAULT_LIMIT: usize = 100;
/// The largest `?limit=` accepted.
pub const MAX_LIMIT: usize = 1000;
/// The response header naming the next page's cursor.
pub const NEXT_CURSOR_HEADER: &str = "x-next-cursor";

/// The order of a list by its sort key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Smallest key first.
    Ascending,
    /// Largest key first (newest first, for keys that start with a timestamp).
    Descending,
}

/// One page's request: how many items, after which key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// At most this many items.
    pub limit: usize,
    /// The sort key of the last item already seen.
    pub after: Option<String>,
}

impl Page {
    /// Parses `?limit=` and `?cursor=`; a bad value is refused naming the parameter.
    pub fn parse(limit: Option<&str>, cursor: Option<&str>) -> Result<Page, ServiceError> {
        let limit = match limit.map(str::trim) {
            None | Some("") => DEFAULT_LIMIT,
            Some(text) => match text.parse::<usize>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
                _ => return Err(ServiceError::invalid("limit", format!("{text:?} is not a number from 1 to {MAX_LIMIT}"))),
            },
        };
        let after = cursor.filter(|c| !c.is_empty()).map(decode_cursor).transpose()?;
        Ok(Page { limit, after })
    }
}

/// The cursor of a sort key.
pub fn encode_cursor(key: &str) -> String {
    URL_SAFE_NO_PAD.encode(key.as_bytes())
}

/// The sort key of a cursor; anything that [`encode_cursor`] did not make is refused
/// naming `cursor`.
pub fn decode_cursor(cursor: &str) -> Result<String, ServiceError> {
    let bad = || ServiceError::invalid("cursor", "not a cursor this server gave (use the X-Next-Cursor of a previous page)");
    let bytes = URL_SAFE_NO_PAD.decode(cursor.trim().as_bytes()).map_err(|_| bad())?;
    String::from_utf8(bytes).map_err(|_| bad())
}

/// One page of `items`: sorted by `key` in `order`, those after `page.after`, at most
/// `page.limit` of them; with the cursor of the next page when more remain. Keys must be
/// unique within the list (append an id when the natural key is not).
pub fn paginate<T>(mut items: Vec<T>, key: impl Fn(&T) -> String, order: Order, page: &Page) -> (Vec<T>, Option<String>) {
    let mut keyed: Vec<(String, T)> = items.drain(..).map(|item| (key(&item), item)).collect();
    keyed.sort_by(|a, b| match order {
        Order::Ascending => a.0.cmp(&b.0),
        Order::Descending => b.0.cmp(&a.0),
    });
    let after = |k: &str| match (&page.after, order) {
        (None, _) => true,
        (Some(last), Order::Ascending) => k > last.as_str(),
        (Some(last), Order::Descending) => k < last.as_str(),
    };
    let mut rest = keyed.into_iter().filter(|(k, _)| after(k)).peekable();
    let mut out = Vec::with_capacity(page.limit.min(64));
    let mut last_key = None;
    while out.len() < page.limit {
        match rest.next() {
            Some((k, item)) => {
                last_key = Some(k);
                out.push(item);
            }
            None => break,
        }
    }
    let next = if rest.peek().is_some() { last_key.map(|k| encode_cursor(&k)) } else { None };
    (out, next)
}

/// Parses a filter value of a serde enum (`status=running`): an unknown value is refused
/// naming `field` and listing the values it may take.
pub fn parse_filter<T: DeserializeOwned>(field: &'static str, text: &str) -> Result<T, ServiceError> {
    serde_json::from_value(serde_json::Value::String(text.to_owned())).map_err(|e| ServiceError::invalid(field, format!("{text:?}: {e}")))
}

/// The headers that point at the next page (`X-Next-Cursor`, `Link`), when there is one.
/// `path` is the list's path, `limit` the page size asked for.
pub fn next_page_headers(path: &str, limit: usize, next: Option<&str>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Some(cursor) = next {
        if let Ok(value) = HeaderValue::from_str(cursor) {
            headers.insert(NEXT_CURSOR_HEADER, value);
        }
        if let Ok(value) = HeaderValue::from_str(&format!("<{path}?limit={limit}&cursor={cursor}>; rel=\"next\"")) {
            headers.insert(header::LINK, value);
        }
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(limit: usize, after: Option<&str>) -> Page {
        Page { limit, after: after.map(str::to_owned) }
    }

    #[test]
    fn limits_and_cursors_are_parsed_or_refused_naming_the_parameter() {
        /// `?limit=`, `?cursor=`, and the page or the field refused.
        type Case<'a> = (Option<&'a str>, Option<&'a str>, Result<Page, &'a str>);
        let cursor = encode_cursor("b");
        let cases: [Case; 10] = [
            (None, None, Ok(page(DEFAULT_LIMIT, None))),
            (Some(""), Some(""), Ok(page(DEFAULT_LIMIT, None))),
            (Some("1"), None, Ok(page(1, None))),
            (Some("1000"), Some(cursor.as_str()), Ok(page(1000, Some("b")))),
            (Some("0"), None, Err("limit")),
            (Some("1001"), None, Err("limit")),
            (Some("-3"), None, Err("limit")),
            (Some("ten"), None, Err("limit")),
            (None, Some("%%%"), Err("cursor")),
            (None, Some("_w"), Err("cursor")),
        ];
        for (limit, cursor, expected) in cases {
            match (Page::parse(limit, cursor), expected) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{limit:?} {cursor:?}"),
                (Err(ServiceError::InvalidArgument { field, .. }), Err(want)) => assert_eq!(field, want, "{limit:?} {cursor:?}"),
                (got, want) => panic!("{limit:?} {cursor:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn cursors_round_trip() {
        for key in ["", "a", "web\u{0}0123", "2026-01-01T00:00:00Z/b-1", "ünïcode"] {
            assert_eq!(decode_cursor(&encode_cursor(key)).expect(key), key);
        }
    }

    #[test]
    fn pages_cover_the_list_once_in_order() {
        let items: Vec<u32> = vec![5, 3, 9, 1, 7, 2, 8];
        let key = |n: &u32| format!("{n:03}");
        for order in [Order::Ascending, Order::Descending] {
            for limit in 1..=8 {
                let mut seen = Vec::new();
                let mut after = None;
                loop {
                    let (got, next) = paginate(items.clone(), key, order, &page(limit, after.as_deref()));
                    assert!(got.len() <= limit);
                    seen.extend(got);
                    match next {
                        Some(cursor) => after = Some(decode_cursor(&cursor).expect("cursor")),
                        None => break,
                    }
                }
                let mut want = items.clone();
                want.sort_unstable();
                if order == Order::Descending {
                    want.reverse();
                }
                assert_eq!(seen, want, "{order:?} limit {limit}");
            }
        }
    }

    #[test]
    fn a_page_table() {
        let items = || vec!["a", "b", "c", "d"];
        let key = |s: &&str| (*s).to_owned();
        let cases: [(Order, Page, &[&str], Option<&str>); 7] = [
            (Order::Ascending, page(2, None), &["a", "b"], Some("b")),
            (Order::Ascending, page(2, Some("b")), &["c", "d"], None),
            (Order::Ascending, page(10, None), &["a", "b", "c", "d"], None),
            (Order::Ascending, page(4, None), &["a", "b", "c", "d"], None),
            // The item of the cursor is gone: the page goes on after where it was.
            (Order::Ascending, page(1, Some("bb")), &["c"], Some("c")),
            (Order::Descending, page(3, None), &["d", "c", "b"], Some("b")),
            (Order::Descending, page(3, Some("b")), &["a"], None),
        ];
        for (order, page, want, next) in cases {
            let (got, cursor) = paginate(items(), key, order, &page);
            assert_eq!(got, want, "{order:?} {page:?}");
            assert_eq!(cursor.map(|c| decode_cursor(&c).expect("cursor")).as_deref(), next, "{order:?} {page:?}");
        }
    }

    #[test]
    fn filter_values_are_parsed_or_refused_naming_the_field() {
        use diplo_api::container::ContainerStatus;
        assert_eq!(parse_filter::<ContainerStatus>("status", "running").expect("running"), ContainerStatus::Running);
        match parse_filter::<ContainerStatus>("status", "sleeping") {
            Err(ServiceError::InvalidArgument { field: "status", message }) => assert!(message.contains("running"), "{message}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_next_page_is_announced_in_headers_only_when_there_is_one() {
        assert!(next_page_headers("/api/v1/nodes", 10, None).is_empty());
        let headers = next_page_headers("/api/v1/nodes", 10, Some("YQ"));
        assert_eq!(headers.get(NEXT_CURSOR_HEADER).and_then(|v| v.to_str().ok()), Some("YQ"));
        assert_eq!(headers.get(header::LINK).and_then(|v| v.to_str().ok()), Some("</api/v1/nodes?limit=10&cursor=YQ>; rel=\"next\""));
    }
}
