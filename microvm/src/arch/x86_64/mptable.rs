//! The MP table (Intel MultiProcessor Specification 1.4): how a guest
//! without ACPI learns its interrupt topology — its CPUs and their local
//! APIC ids, the I/O APIC KVM's in-kernel irqchip emulates, and which ISA
//! interrupt reaches which I/O APIC pin.
//!
//! Without it a Linux guest finds "no MADT or MP tables", runs its local
//! APIC in virtual-wire mode with the I/O APIC unused, sees one CPU
//! whatever `--vcpus` says, and calibrates its timer through the PIC,
//! where a tick lost while LVT0 is masked can leave it spinning. Firecracker
//! writes the same table at the same place.
//!
//! Layout, at [`MPTABLE_START`] (the last KiB of base memory, which Linux
//! scans and the e820 map reserves): the 16-byte floating pointer, then the
//! configuration table — header, one processor entry per vCPU, the ISA bus,
//! the I/O APIC, an interrupt entry per I/O APIC pin (ISA IRQ n → pin n, as
//! KVM routes GSIs by default), and the two local interrupts (ExtINT on
//! LINT0, NMI on LINT1).
use super::layout::EBDA_START;

/// Where the table goes (Linux scans the last KiB below 640 KiB).
pub const MPTABLE_START: u64 = EBDA_START;
/// Room it may take.
pub const MPTABLE_MAX: usize = 1024;
/// The local APICs' address, as KVM emulates them.
pub const APIC_DEFAULT_PHYS_BASE: u32 = 0xfee0_0000;
/// The I/O APIC's address, as KVM's in-kernel irqchip emulates it.
pub const IO_APIC_DEFAULT_PHYS_BASE: u32 = 0xfec0_0000;
/// Pins of KVM's I/O APIC.
pub const IOAPIC_PINS: u8 = 24;

const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTPROCESSOR: u8 = 2;
/// Family 6, model 6, stepping 3: any P6-class value will do.
const CPU_SIGNATURE: u32 = (6 << 8) | (6 << 4) | 3;
/// FPU and APIC present.
const CPU_FEATURES: u32 = (1 << 0) | (1 << 9);
const MP_IRQ_INT: u8 = 0;
const MP_IRQ_NMI: u8 = 1;
const MP_IRQ_EXTINT: u8 = 3;
const BUS_ISA: u8 = 0;

/// Why no table could be written.
#[derive(Debug, thiserror::Error)]
#[error("{vcpus} vCPUs do not fit in an MP table of {MPTABLE_MAX} bytes: use fewer vCPUs")]
pub struct MptableError {
    vcpus: u8,
}

fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |a, b| a.wrapping_add(*b))
        .wrapping_neg()
}

/// The table's bytes for `vcpus` CPUs (APIC ids 0..vcpus, CPU 0 the boot
/// processor), to be written at [`MPTABLE_START`].
pub fn mptable(vcpus: u8) -> Result<Vec<u8>, MptableError> {
    let vcpus = vcpus.max(1);
    let ioapic_id = vcpus; // the first id no CPU has
    let config_at = MPTABLE_START as u32 + 16;

    let mut entries = Vec::new();
    let mut count: u16 = 0;
    for cpu in 0..vcpus {
        let flags = CPU_ENABLED | if cpu == 0 { CPU_BOOTPROCESSOR } else { 0 };
        entries.extend_from_slice(&[0, cpu, APIC_VERSION, flags]);
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[1, BUS_ISA]);
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    entries.extend_from_slice(&[2, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&IO_APIC_DEFAULT_PHYS_BASE.to_le_bytes());
    count += 1;
    for pin in 0..IOAPIC_PINS {
        // type 3: source bus IRQ `pin` → I/O APIC pin `pin`, polarity and
        // trigger "conforms to the bus".
        entries.extend_from_slice(&[3, MP_IRQ_INT, 0, 0, BUS_ISA, pin, ioapic_id, pin]);
        count += 1;
    }
    // type 4: ExtINT on every local APIC's LINT0, NMI on LINT1.
    entries.extend_from_slice(&[4, MP_IRQ_EXTINT, 0, 0, BUS_ISA, 0, 0xff, 0]);
    entries.extend_from_slice(&[4, MP_IRQ_NMI, 0, 0, BUS_ISA, 0, 0xff, 1]);
    count += 2;

    let mut config = Vec::with_capacity(44 + entries.len());
    config.extend_from_slice(b"PCMP");
    config.extend_from_slice(&((44 + entries.len()) as u16).to_le_bytes());
    config.push(4); // spec revision 1.4
    config.push(0); // checksum, below
    config.extend_from_slice(b"ISOLAB  "); // OEM id, 8 bytes
    config.extend_from_slice(b"MICROVM     "); // product id, 12 bytes
    config.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    config.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    config.extend_from_slice(&count.to_le_bytes());
    config.extend_from_slice(&APIC_DEFAULT_PHYS_BASE.to_le_bytes());
    config.extend_from_slice(&[0; 4]); // extended table length, checksum, reserved
    config.extend_from_slice(&entries);
    config[7] = checksum(&config);

    let mut fp = Vec::with_capacity(16);
    fp.extend_from_slice(b"_MP_");
    fp.extend_from_slice(&config_at.to_le_bytes());
    fp.push(1); // length in 16-byte units
    fp.push(4); // spec revision 1.4
    fp.push(0); // checksum, below
    fp.extend_from_slice(&[0; 5]); // feature bytes: a table is present
    fp[10] = checksum(&fp);

    let mut out = fp;
    out.extend_from_slice(&config);
    if out.len() > MPTABLE_MAX {
        return Err(MptableError { vcpus });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn both_structures_check_out() {
        for cpus in [1u8, 2, 8] {
            let t = mptable(cpus).unwrap();
            assert_eq!(&t[..4], b"_MP_");
            assert_eq!(sum(&t[..16]), 0, "floating pointer checksum");
            let at = u32::from_le_bytes(t[4..8].try_into().unwrap()) as u64;
            assert_eq!(at, MPTABLE_START + 16);
            let cfg = &t[16..];
            assert_eq!(&cfg[..4], b"PCMP");
            let len = u16::from_le_bytes([cfg[4], cfg[5]]) as usize;
            assert_eq!(len, cfg.len());
            assert_eq!(sum(cfg), 0, "configuration table checksum");
            let count = u16::from_le_bytes([cfg[34], cfg[35]]);
            assert_eq!(count, u16::from(cpus) + 2 + u16::from(IOAPIC_PINS) + 2);
            // Walk the entries by their types' sizes.
            let (mut off, mut seen, mut cpus_seen) = (44, 0, 0);
            while off < cfg.len() {
                let size = match cfg[off] {
                    0 => {
                        cpus_seen += 1;
                        20
                    }
                    1..=4 => 8,
                    t => panic!("entry type {t}"),
                };
                off += size;
                seen += 1;
            }
            assert_eq!((off, seen, cpus_seen), (cfg.len(), count, cpus));
            // Only CPU 0 is the boot processor.
            assert_eq!(cfg[44 + 3], CPU_ENABLED | CPU_BOOTPROCESSOR);
        }
    }

    #[test]
    fn too_many_cpus_is_refused_not_overflowed() {
        // 16 + 44 + 20 per CPU + 8 + 8 + 24 × 8 + 2 × 8 bytes ≤ 1 KiB.
        assert!(mptable(37).is_ok());
        assert!(mptable(38).is_err());
    }
}
