//! `isolab book`: the HTML book, built with mdBook as a library.
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};

/// Builds the HTML book with mdBook.
pub fn build_book(book_dir: &Path) -> Result<PathBuf> {
    if !book_dir.join("src/generated/host.md").is_file() {
        bail!(
            "{} has no generated results: run `isolab report` first",
            book_dir.display()
        );
    }
    let book = mdbook::MDBook::load(book_dir)
        .map_err(|e| anyhow!("loading the book in {}: {e}", book_dir.display()))?;
    book.build()
        .map_err(|e| anyhow!("building the book: {e}"))?;
    Ok(book_dir.join("book"))
}
