//! `isolab report`: a run directory → Markdown tables, number snippets and
//! charts in `book/src/generated/` (generated, never committed); `isolab
//! book`: the HTML book (mdBook, as a library).
//!
//! Every number the book's prose quotes is a snippet file written here
//! (`generated/numbers/*.txt`, no trailing newline, included inline), so
//! the book always speaks of the reader's own run.
mod book;
pub mod compare;
mod run;
mod sections;

pub use book::{build_book, check_book_sources};
pub use compare::{compare, Change};
pub use run::{host_note, latest_run, load_run, Run, FIRECRACKER_OVERHEAD_KIB, REFERENCES};
pub use sections::generate;
