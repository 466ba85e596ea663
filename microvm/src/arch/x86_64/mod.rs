//! x86-64 specifics: memory map, GDT, page tables, vCPU registers.
pub mod acpi;
pub mod gdt;
pub mod layout;
pub mod mptable;
pub mod regs;
