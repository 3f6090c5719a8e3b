//! Lists a page at a time: the request's `page_size` and `page_token`, and
//! the answer's `next_page_token`. Items come in key order (names, ids); a
//! token is the last key of a page, hex-encoded behind a version tag so
//! clients treat it as opaque and a later format can be told apart.

use tonic::Status;

use super::errors::invalid;

/// Items a page holds when the request does not say.
pub(crate) const DEFAULT_PAGE: usize = 500;
/// Most items a page may hold.
pub(crate) const MAX_PAGE: usize = 1000;
const TOKEN_TAG: &str = "p1.";

/// Where a page starts and how long it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PageRequest {
    pub size: usize,
    /// Items with keys after this one (`None`: from the first).
    pub after: Option<String>,
}

impl PageRequest {
    pub(crate) fn parse(page_size: u32, token: &str) -> Result<PageRequest, Status> {
        let size = match page_size as usize {
            0 => DEFAULT_PAGE,
            n if n <= MAX_PAGE => n,
            n => {
                return Err(invalid(
                    "page_size",
                    format!("{n} is more than the most a page holds, {MAX_PAGE}"),
                ))
            }
        };
        let after = if token.is_empty() {
            None
        } else {
            let bad = || invalid("page_token", "is not a token this API gave out");
            let hex = token.strip_prefix(TOKEN_TAG).ok_or_else(bad)?;
            let bytes = hex::decode(hex).map_err(|_| bad())?;
            Some(String::from_utf8(bytes).map_err(|_| bad())?)
        };
        Ok(PageRequest { size, after })
    }

    /// The page of `items` (in key order) this request asks for, each
    /// made by `make` (only the page's: the ones skipped cost nothing but
    /// their keys), and the token of the next page (empty after the last).
    pub(crate) fn take<'a, S: 'a, T>(
        &self,
        items: impl Iterator<Item = (&'a str, S)>,
        mut make: impl FnMut(S) -> T,
    ) -> (Vec<T>, String) {
        let mut page = Vec::new();
        let mut last = None;
        let mut items = items
            .skip_while(|(k, _)| self.after.as_deref().is_some_and(|a| *k <= a))
            .peekable();
        while page.len() < self.size {
            let Some((key, item)) = items.next() else {
                break;
            };
            last = Some(key);
            page.push(make(item));
        }
        let next = match (last, items.peek()) {
            (Some(key), Some(_)) => format!("{TOKEN_TAG}{}", hex::encode(key)),
            _ => String::new(),
        };
        (page, next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("job-{i:03}")).collect()
    }

    #[test]
    fn pages_walk_every_item_once_in_order_and_end_with_an_empty_token() {
        let all = keys(7);
        let mut seen = Vec::new();
        let mut token = String::new();
        let mut pages = 0;
        loop {
            let req = PageRequest::parse(3, &token).unwrap();
            let (page, next) = req.take(all.iter().map(|k| (k.as_str(), k)), Clone::clone);
            seen.extend(page);
            pages += 1;
            if next.is_empty() {
                break;
            }
            token = next;
        }
        assert_eq!(seen, all);
        assert_eq!(pages, 3);
        // An exact multiple ends without an empty page after it.
        let req = PageRequest::parse(7, "").unwrap();
        let (page, next) = req.take(all.iter().map(|k| (k.as_str(), ())), |u| u);
        assert_eq!((page.len(), next.as_str()), (7, ""));
    }

    #[test]
    fn bad_sizes_and_tokens_are_refused_naming_the_field() {
        assert_eq!(PageRequest::parse(0, "").unwrap().size, DEFAULT_PAGE);
        let e = PageRequest::parse(5000, "").unwrap_err();
        assert!(e.message().starts_with("page_size:"), "{}", e.message());
        for token in ["job-003", "p1.zz", "p1.ff"] {
            let e = PageRequest::parse(10, token).unwrap_err();
            assert!(
                e.message().starts_with("page_token:"),
                "{token}: {}",
                e.message()
            );
        }
    }

    #[test]
    fn a_page_after_a_deleted_key_starts_at_the_next_one() {
        let all = keys(5);
        let token = format!("{TOKEN_TAG}{}", hex::encode("job-001x"));
        let req = PageRequest::parse(2, &token).unwrap();
        let (page, _) = req.take(all.iter().map(|k| (k.as_str(), k)), Clone::clone);
        assert_eq!(page, ["job-002", "job-003"]);
    }
}
