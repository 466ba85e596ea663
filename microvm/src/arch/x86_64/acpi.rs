//! ACPI tables: how a guest kernel built for PCs finds the devices the
//! monitor placed, when it cannot be told on its command line.
//!
//! A kernel learns about a virtio-mmio device either from a
//! `virtio_mmio.device=` word (only if it was built with
//! `CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES`, which the lean kernel has and
//! Debian's kernels do not), from a device tree, or from ACPI, where the
//! device is `LNRO0005` in the DSDT. Firecracker took the same step for
//! the same reason. The tables are Firecracker's shape, built with
//! rust-vmm's `acpi_tables`:
//!
//! ```text
//! RSDP (at ACPI_START, where Linux scans, and in the zero page)
//!  └─ XSDT ─┬─ FADT: hardware-reduced ACPI (no PM timer, no SCI, no
//!           │        legacy PIC), no VGA, no MSI, no ASPM; → DSDT
//!           │          COM1 (PNP0501), the i8042 (PNP0303, whose reset
//!           │          line ends the VM), one LNRO0005 per virtio disk
//!           └─ MADT: one local APIC per vCPU, the I/O APIC
//! ```
//!
//! The MP table stays for kernels without ACPI (the lean kernel). A kernel
//! with both the command-line words and ACPI sees each device twice; the
//! second sighting fails to claim the window and is ignored.
use acpi_tables::{aml, fadt, madt, rsdp, sdt, xsdt, Aml};

use super::layout::{HIMEM_START, VIRTIO_FIRST_IRQ, VIRTIO_MMIO_START};
use super::mptable::{APIC_DEFAULT_PHYS_BASE, IO_APIC_DEFAULT_PHYS_BASE};

/// Where the RSDP goes: the start of the BIOS read-only area Linux scans
/// (0xe0000–0xfffff), inside the range the e820 map reserves.
pub const ACPI_START: u64 = 0xe_0000;
/// Room for all tables (to the end of that area).
pub const ACPI_MAX: usize = (HIMEM_START - ACPI_START) as usize;

const OEM_ID: [u8; 6] = *b"ISOLAB";
const OEM_REVISION: u32 = 1;
/// FADT "hypervisor vendor identity": who made this machine.
const HYPERVISOR_VENDOR: u64 = u64::from_le_bytes(*b"ISOLABVM");
/// IA-PC boot architecture flags (FADT): an 8042 is present (its reset
/// line is how the guest ends the VM), no VGA, no MSI, PCIe ASPM not to be
/// touched.
const IAPC_8042: u16 = 1 << 1;
const IAPC_VGA_NOT_PRESENT: u16 = 1 << 2;
const IAPC_MSI_NOT_PRESENT: u16 = 1 << 3;
const IAPC_PCIE_ASPM_CONTROLS: u16 = 1 << 4;

/// Why the tables could not be built.
#[derive(Debug, thiserror::Error)]
#[error("the ACPI tables for {vcpus} vCPUs and {disks} disks take {len} bytes, more than the {ACPI_MAX} reserved for them: use fewer")]
pub struct AcpiError {
    vcpus: u8,
    disks: usize,
    len: usize,
}

/// A virtio-mmio device as the tables describe it.
#[derive(Debug, Clone, Copy)]
pub struct VirtioMmio {
    pub base: u64,
    pub size: u64,
    pub irq: u32,
}

fn bytes(t: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    t.to_aml_bytes(&mut v);
    v
}

/// The DSDT's body: COM1, the i8042 and the virtio-mmio devices.
fn dsdt_body(devices: &[VirtioMmio]) -> Vec<u8> {
    let mut body = Vec::new();
    aml::Device::new(
        "_SB_.COM1".into(),
        vec![
            &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0501")),
            &aml::Name::new("_UID".into(), &aml::ZERO),
            &aml::Name::new(
                "_CRS".into(),
                &aml::ResourceTemplate::new(vec![
                    &aml::IO::new(0x3f8, 0x3f8, 1, 8),
                    &aml::Interrupt::new(true, true, false, false, 4),
                ]),
            ),
        ],
    )
    .to_aml_bytes(&mut body);
    aml::Device::new(
        "_SB_.PS2_".into(),
        vec![
            &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0303")),
            &aml::Name::new(
                "_CRS".into(),
                &aml::ResourceTemplate::new(vec![
                    &aml::IO::new(0x60, 0x60, 1, 1),
                    &aml::IO::new(0x64, 0x64, 1, 1),
                    &aml::Interrupt::new(true, true, false, false, 1),
                ]),
            ),
        ],
    )
    .to_aml_bytes(&mut body);
    for (i, d) in devices.iter().enumerate() {
        let name = format!("_SB_.V{i:03X}");
        let uid: usize = i;
        let window = aml::Memory32Fixed::new(true, d.base as u32, d.size as u32);
        let line = aml::Interrupt::new(true, true, false, false, d.irq);
        let crs = aml::ResourceTemplate::new(vec![&window, &line]);
        let hid = aml::Name::new("_HID".into(), &"LNRO0005");
        let uid = aml::Name::new("_UID".into(), &uid);
        let crs = aml::Name::new("_CRS".into(), &crs);
        aml::Device::new(name.as_str().into(), vec![&hid, &uid, &crs]).to_aml_bytes(&mut body);
    }
    body
}

/// The tables' bytes, to be written at [`ACPI_START`]: RSDP, XSDT, FADT,
/// MADT and DSDT, one after another (8-byte aligned).
pub fn acpi_tables(vcpus: u8, devices: &[VirtioMmio]) -> Result<Vec<u8>, AcpiError> {
    let vcpus = vcpus.max(1);
    let align = |n: usize| n.next_multiple_of(8);
    let rsdp_len = align(rsdp::Rsdp::len());
    let xsdt_len = align(36 + 2 * 8);
    let fadt_len = align(fadt::FADT::len());
    let xsdt_at = ACPI_START + rsdp_len as u64;
    let fadt_at = xsdt_at + xsdt_len as u64;

    let mut madt = madt::MADT::new(
        OEM_ID,
        *b"ISOLMADT",
        OEM_REVISION,
        madt::LocalInterruptController::Address(APIC_DEFAULT_PHYS_BASE),
    );
    for cpu in 0..vcpus {
        madt.add_structure(madt::ProcessorLocalApic::new(
            cpu,
            cpu,
            madt::EnabledStatus::Enabled,
        ));
    }
    // The I/O APIC takes the first id no CPU has, as in the MP table.
    madt.add_structure(madt::IoApic::new(vcpus, IO_APIC_DEFAULT_PHYS_BASE, 0));
    let madt = bytes(&madt);
    let madt_at = fadt_at + fadt_len as u64;
    let dsdt_at = madt_at + align(madt.len()) as u64;

    let mut dsdt = sdt::Sdt::new(*b"DSDT", 36, 6, OEM_ID, *b"ISOLDSDT", OEM_REVISION);
    dsdt.append_slice(&dsdt_body(devices));
    let dsdt = bytes(&dsdt);

    let mut f = fadt::FADTBuilder::new(OEM_ID, *b"ISOLFADT", OEM_REVISION)
        .dsdt_64(dsdt_at)
        .flag(fadt::Flags::HwReducedAcpi)
        .flag(fadt::Flags::PwrButton)
        .flag(fadt::Flags::SlpButton);
    f.iapc_boot_arch =
        (IAPC_8042 | IAPC_VGA_NOT_PRESENT | IAPC_MSI_NOT_PRESENT | IAPC_PCIE_ASPM_CONTROLS).into();
    f.hypervisor_vendor_identity = HYPERVISOR_VENDOR.into();
    let fadt = bytes(&f.finalize());

    let mut xsdt = xsdt::XSDT::new(OEM_ID, *b"ISOLXSDT", OEM_REVISION);
    xsdt.add_entry(fadt_at);
    xsdt.add_entry(madt_at);
    let xsdt = bytes(&xsdt);
    let rsdp = bytes(&rsdp::Rsdp::new(OEM_ID, xsdt_at));

    let mut out = Vec::new();
    for (table, at) in [
        (&rsdp, ACPI_START),
        (&xsdt, xsdt_at),
        (&fadt, fadt_at),
        (&madt, madt_at),
        (&dsdt, dsdt_at),
    ] {
        debug_assert_eq!(ACPI_START + out.len() as u64, at);
        out.extend_from_slice(table);
        out.resize(align(out.len()), 0);
    }
    if out.len() > ACPI_MAX {
        return Err(AcpiError {
            vcpus,
            disks: devices.len(),
            len: out.len(),
        });
    }
    Ok(out)
}

/// The virtio-mmio devices for `disks` disks, as the monitor places them.
pub fn virtio_devices(disks: usize, window: u64) -> Vec<VirtioMmio> {
    (0..disks)
        .map(|i| VirtioMmio {
            base: VIRTIO_MMIO_START + i as u64 * window,
            size: window,
            irq: VIRTIO_FIRST_IRQ + i as u32,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }
    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
    }
    fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
    }
    /// The table at guest address `at` in `t`, by its own length.
    fn table(t: &[u8], at: u64) -> &[u8] {
        let off = (at - ACPI_START) as usize;
        let len = u32_at(t, off + 4) as usize;
        &t[off..off + len]
    }

    #[test]
    fn every_table_is_found_from_the_rsdp_and_checks_out() {
        let devs = virtio_devices(3, 0x1000);
        let t = acpi_tables(2, &devs).unwrap();
        assert_eq!(&t[..8], b"RSD PTR ");
        assert_eq!(sum(&t[..20]), 0, "RSDP checksum");
        assert_eq!(sum(&t[..36]), 0, "RSDP extended checksum");
        let xsdt = table(&t, u64_at(&t, 24));
        assert_eq!(&xsdt[..4], b"XSDT");
        assert_eq!(sum(xsdt), 0);
        let entries: Vec<u64> = (36..xsdt.len())
            .step_by(8)
            .map(|o| u64_at(xsdt, o))
            .collect();
        let sigs: Vec<&[u8]> = entries.iter().map(|a| &table(&t, *a)[..4]).collect();
        assert_eq!(sigs, [b"FACP", b"APIC"]);
        let fadt = table(&t, entries[0]);
        assert_eq!(sum(fadt), 0);
        // FADT flags (offset 112): hardware-reduced ACPI.
        assert_ne!(u32_at(fadt, 112) & (1 << 20), 0);
        // X_DSDT at offset 140.
        let dsdt = table(&t, u64_at(fadt, 140));
        assert_eq!(&dsdt[..4], b"DSDT");
        assert_eq!(sum(dsdt), 0);
        let madt = table(&t, entries[1]);
        assert_eq!(sum(madt), 0);
        assert_eq!(u32_at(madt, 36), APIC_DEFAULT_PHYS_BASE);
        // Two local APICs (type 0, 8 bytes) and one I/O APIC (type 1).
        let mut kinds = Vec::new();
        let mut off = 44;
        while off < madt.len() {
            kinds.push(madt[off]);
            off += madt[off + 1] as usize;
        }
        assert_eq!(kinds, [0, 0, 1]);
        assert!(t.len() <= ACPI_MAX);
    }

    #[test]
    fn the_dsdt_names_each_virtio_window_and_its_line() {
        let devs = virtio_devices(2, 0x1000);
        let body = dsdt_body(&devs);
        let hits = body.windows(8).filter(|w| w == b"LNRO0005").count();
        assert_eq!(hits, 2);
        for d in &devs {
            // Memory32Fixed: tag 0x86, length 9, read-write, base, length.
            let mut want = vec![0x86, 9, 0, 1];
            want.extend_from_slice(&(d.base as u32).to_le_bytes());
            want.extend_from_slice(&(d.size as u32).to_le_bytes());
            assert!(body.windows(want.len()).any(|w| w == want), "{d:?}");
            // Extended interrupt: consumer, edge, active high, exclusive.
            let mut irq = vec![0x89, 6, 0, 0b0011, 1];
            irq.extend_from_slice(&d.irq.to_le_bytes());
            assert!(body.windows(irq.len()).any(|w| w == irq), "{d:?}");
        }
        assert!(body.windows(4).any(|w| w == b"COM1"));
    }

    #[test]
    fn the_most_devices_and_cpus_still_fit() {
        let devs = virtio_devices(super::super::layout::VIRTIO_MAX_DEVICES, 0x1000);
        assert!(acpi_tables(u8::MAX, &devs).is_ok());
    }
}
