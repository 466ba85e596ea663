//! `isolab book`: the HTML book, built with mdBook as a library.
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};

/// Fails, in one sentence, unless `book_dir` holds the book's sources.
pub fn check_book_sources(book_dir: &Path) -> Result<()> {
    if !book_dir.join("book.toml").is_file() {
        bail!(
            "{} holds no book sources (book.toml): run isolab from its checkout, or pass --book-dir CHECKOUT/book",
            book_dir.display()
        );
    }
    Ok(())
}

/// Builds the HTML book with mdBook.
pub fn build_book(book_dir: &Path) -> Result<PathBuf> {
    check_book_sources(book_dir)?;
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
