//! The guest-physical memory map (x86-64), Firecracker's shape.
//!
//! ```text
//! 0x0000_0000 ┌───────────────────────────┐
//!             │ real-mode IVT / BDA       │
//! 0x0000_0500 │ GDT (6 entries)           │ GDT_START
//! 0x0000_0530 │ IDT (empty)               │ IDT_START
//! 0x0000_6000 │ PVH start info, memmap    │ PVH_INFO_START (PVH boot only)
//! 0x0000_7000 │ zero page (boot_params)   │ ZERO_PAGE_START
//! 0x0000_8ff0 │ boot stack (grows down)   │ BOOT_STACK_POINTER
//! 0x0000_9000 │ PML4                      │ PML4_START
//! 0x0000_a000 │ PDPT                      │ PDPT_START
//! 0x0000_b000 │ PD (512 × 2 MiB = 1 GiB)  │ PD_START
//! 0x0002_0000 │ kernel command line       │ CMDLINE_START (≤ CMDLINE_MAX_SIZE)
//! 0x0009_fc00 ├───────────────────────────┤ EBDA_START: reserved up to 1 MiB
//! 0x0010_0000 │ kernel (ELF / bzImage)    │ HIMEM_START
//!             │ …                         │
//!             │ initramfs (top of low RAM)│
//! 0xc000_0000 ├───────────────────────────┤ MMIO_GAP_START: no RAM (devices)
//! 0xd000_0000 │ virtio-mmio, 4 KiB each   │ VIRTIO_MMIO_START (IRQ 5, 6, …)
//! 0x1_0000_0000 RAM above 4 GiB, if any   │
//! ```
//!
//! The first GiB is identity-mapped with 2 MiB pages, which is all a Linux
//! kernel's 64-bit entry needs before it builds its own page tables. The
//! virtio-mmio windows above it are mapped by the guest itself (the bare
//! lab guest adds the one 2 MiB page it needs, as it must under QEMU too).

/// Where the GDT is written.
pub const GDT_START: u64 = 0x500;
/// PVH boot: `hvm_start_info`, then its memory map, then its module list
/// (the initramfs), in the free page below the zero page.
pub const PVH_INFO_START: u64 = 0x6000;
pub const PVH_MEMMAP_START: u64 = 0x6040;
pub const PVH_MODLIST_START: u64 = 0x6200;
/// Where the (empty) IDT is written.
pub const IDT_START: u64 = 0x530;
/// The Linux "zero page" (`struct boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Page-table pages.
pub const PML4_START: u64 = 0x9000;
pub const PDPT_START: u64 = 0xa000;
pub const PD_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Longest command line accepted (bytes, with the NUL).
pub const CMDLINE_MAX_SIZE: usize = 4096;
/// Start of the extended BIOS data area (reserved to 1 MiB).
pub const EBDA_START: u64 = 0x9fc00;
/// Kernels are loaded at 1 MiB.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO hole (no RAM from here to 4 GiB).
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End of the 32-bit MMIO hole.
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// First virtio-mmio device window (4 KiB each, Firecracker's address).
pub const VIRTIO_MMIO_START: u64 = 0xd000_0000;
/// virtio-mmio devices the monitor will place (all in one 2 MiB page).
pub const VIRTIO_MAX_DEVICES: usize = 8;
/// Interrupt line of the first virtio-mmio device (the next get 6, 7 …):
/// legacy ISA lines the serial port (4) does not use.
pub const VIRTIO_FIRST_IRQ: u32 = 5;
/// Bytes identity-mapped by the boot page tables.
pub const IDENTITY_MAPPED: u64 = 1 << 30;
/// Smallest guest the monitor builds.
pub const MIN_MEMORY_MIB: u64 = 8;
/// TSS address KVM needs on Intel (three pages, below 4 GiB).
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;

/// The guest's RAM regions for `mem_bytes` of memory: low RAM up to the
/// MMIO hole, the rest above 4 GiB.
pub fn ram_regions(mem_bytes: u64) -> Vec<(u64, u64)> {
    if mem_bytes <= MMIO_GAP_START {
        vec![(0, mem_bytes)]
    } else {
        vec![
            (0, MMIO_GAP_START),
            (MMIO_GAP_END, mem_bytes - MMIO_GAP_START),
        ]
    }
}

/// The e820 map the guest is given: (address, size, type 1 = RAM / 2 = reserved).
pub fn e820_map(mem_bytes: u64) -> Vec<(u64, u64, u32)> {
    let mut map = vec![
        (0, EBDA_START, 1),
        (EBDA_START, HIMEM_START - EBDA_START, 2),
    ];
    for (start, size) in ram_regions(mem_bytes) {
        let s = start.max(HIMEM_START);
        let end = start + size;
        if end > s {
            map.push((s, end - s, 1));
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn low_structures_do_not_overlap() {
        let mut spans = [
            (GDT_START, 6 * 8),
            (IDT_START, 8),
            (ZERO_PAGE_START, 4096),
            (PVH_INFO_START, 0x40),
            (PVH_MEMMAP_START, 0x1c0),
            (PVH_MODLIST_START, 0x20),
            // The boot stack may use the page below its pointer, down to
            // the end of the zero page.
            (
                ZERO_PAGE_START + 0x1000,
                BOOT_STACK_POINTER - (ZERO_PAGE_START + 0x1000),
            ),
            (PML4_START, 4096),
            (PDPT_START, 4096),
            (PD_START, 4096),
            (CMDLINE_START, CMDLINE_MAX_SIZE as u64),
        ];
        spans.sort();
        for w in spans.windows(2) {
            assert!(
                w[0].0 + w[0].1 <= w[1].0,
                "{:x?} overlaps {:x?}",
                w[0],
                w[1]
            );
        }
        assert!(CMDLINE_START + CMDLINE_MAX_SIZE as u64 <= EBDA_START);
    }

    #[test]
    fn the_virtio_window_is_in_the_hole_and_in_one_large_page() {
        let end = VIRTIO_MMIO_START + VIRTIO_MAX_DEVICES as u64 * 0x1000;
        assert!(VIRTIO_MMIO_START >= MMIO_GAP_START && end <= KVM_TSS_ADDRESS);
        // One 2 MiB page holds every window: the guest maps one page.
        assert_eq!(VIRTIO_MMIO_START >> 21, (end - 1) >> 21);
        assert!(VIRTIO_FIRST_IRQ as usize + VIRTIO_MAX_DEVICES <= 16);
    }

    #[test]
    fn regions_split_around_the_mmio_hole() {
        assert_eq!(ram_regions(128 << 20), vec![(0, 128 << 20)]);
        assert_eq!(
            ram_regions(4 << 30),
            vec![(0, MMIO_GAP_START), (MMIO_GAP_END, 1 << 30)]
        );
    }

    #[test]
    fn e820_reserves_the_bios_area_and_covers_all_ram() {
        let m = e820_map(64 << 20);
        assert_eq!(m[0], (0, EBDA_START, 1));
        assert_eq!(m[1].2, 2);
        assert_eq!(m[2], (HIMEM_START, (64 << 20) - HIMEM_START, 1));
        let ram: u64 = e820_map(4 << 30)
            .iter()
            .filter(|e| e.2 == 1)
            .map(|e| e.1)
            .sum();
        assert_eq!(ram, (4 << 30) - (HIMEM_START - EBDA_START));
    }
}
