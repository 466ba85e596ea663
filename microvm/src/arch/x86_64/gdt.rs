//! GDT entries and the KVM segment registers made from them.
use kvm_bindings::kvm_segment;

/// Builds a GDT descriptor from flags (access byte + flags nibble, as
/// `0xa09b`), base and limit.
pub fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((u64::from(base) & 0xff00_0000) << (56 - 24))
        | ((u64::from(flags) & 0x0000_f0ff) << 40)
        | ((u64::from(limit) & 0x000f_0000) << (48 - 16))
        | ((u64::from(base) & 0x00ff_ffff) << 16)
        | (u64::from(limit) & 0x0000_ffff)
}

fn base(entry: u64) -> u64 {
    ((entry & 0xff00_0000_0000_0000) >> 32)
        | ((entry & 0x0000_00ff_0000_0000) >> 16)
        | ((entry & 0x0000_0000_ffff_0000) >> 16)
}

fn limit(entry: u64) -> u32 {
    (((entry & 0x000f_0000_0000_0000) >> 32) | (entry & 0x0000_0000_0000_ffff)) as u32
}

/// The segment register KVM wants for GDT entry `index`.
pub fn segment(entry: u64, index: u8) -> kvm_segment {
    let g = ((entry >> 55) & 1) as u8;
    let raw_limit = limit(entry);
    kvm_segment {
        base: base(entry),
        // With the granularity bit the limit counts 4 KiB pages.
        limit: if g == 1 {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector: u16::from(index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        padding: 0,
        unusable: u8::from(((entry >> 47) & 1) == 0),
    }
}

/// A flat 32-bit code segment (D=1, L=0): what the PVH entry runs in.
pub const CODE32: u64 = 0x00cf_9b00_0000_ffff;

/// The boot GDT: null, 64-bit code, data, TSS, and user (DPL 3) data and
/// 64-bit code, which the lab guest uses to run its workload in ring 3.
pub fn boot_gdt() -> [u64; 6] {
    [
        gdt_entry(0, 0, 0),
        gdt_entry(0xa09b, 0, 0xfffff), // code: present, DPL0, exec/read, L=1, G=1
        gdt_entry(0xc093, 0, 0xfffff), // data: present, read/write, D/B=1, G=1
        gdt_entry(0x808b, 0, 0xfffff), // TSS: present, busy 64-bit TSS
        gdt_entry(0xc0f3, 0, 0xfffff), // user data: DPL3 (selector 0x23)
        gdt_entry(0xa0fb, 0, 0xfffff), // user code: DPL3, L=1 (selector 0x2b)
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_descriptors() {
        // The classic flat 64-bit code and data descriptors.
        assert_eq!(gdt_entry(0xa09b, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(gdt_entry(0xc093, 0, 0xfffff), 0x00cf_9300_0000_ffff);
        assert_eq!(gdt_entry(0, 0, 0), 0);
    }

    #[test]
    fn segments_from_entries() {
        let gdt = boot_gdt();
        let cs = segment(gdt[1], 1);
        assert_eq!(
            (cs.selector, cs.l, cs.db, cs.present, cs.type_, cs.s, cs.g),
            (8, 1, 0, 1, 0xb, 1, 1)
        );
        assert_eq!(cs.limit, 0xffff_ffff);
        let ds = segment(gdt[2], 2);
        assert_eq!((ds.selector, ds.l, ds.db, ds.type_), (16, 0, 1, 3));
        let tss = segment(gdt[3], 3);
        assert_eq!((tss.selector, tss.s, tss.type_), (24, 0, 0xb));
        assert_eq!(segment(gdt[0], 0).unusable, 1);
    }

    #[test]
    fn base_and_limit_round_trip() {
        let e = gdt_entry(0x8093, 0x1234_5678, 0xabcde);
        assert_eq!(base(e), 0x1234_5678);
        assert_eq!(limit(e), 0xabcde);
    }
}
