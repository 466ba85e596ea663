//! vCPU state for a 64-bit entry: page tables, segment and control
//! registers, FPU/SSE, MSRs and CPUID.
use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_sregs, CpuId, Msrs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use super::gdt::{boot_gdt, segment};
use super::layout::*;

/// Errors configuring a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    #[error("writing boot structures into guest memory: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
    #[error("KVM refused the vCPU's {what}: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
}

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> RegsError {
    move |source| RegsError::Kvm { what, source }
}

const CR0_PE: u64 = 1;
const CR0_MP: u64 = 1 << 1;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_PG: u64 = 1 << 31;
const CR0_EM: u64 = 1 << 2;
const CR0_NW: u64 = 1 << 29;
const CR0_CD: u64 = 1 << 30;
const CR4_PAE: u64 = 1 << 5;
const CR4_OSFXSR: u64 = 1 << 9;
const CR4_OSXMMEXCPT: u64 = 1 << 10;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// The three page-table pages identity-mapping the first GiB with 2 MiB
/// pages: (address, 64-bit entries) to write. Device windows above it
/// (virtio-mmio) are the guest's to map, as any OS maps its devices.
pub fn identity_page_tables() -> Vec<(u64, Vec<u64>)> {
    // Present, writable and user-accessible: the lab guest may run its
    // workload in ring 3 on these same tables.
    const PRESENT_RW: u64 = 0x7;
    const HUGE: u64 = 0x80;
    let pd: Vec<u64> = (0..512u64).map(|i| (i << 21) | PRESENT_RW | HUGE).collect();
    vec![
        (PML4_START, vec![PDPT_START | PRESENT_RW]),
        (PDPT_START, vec![PD_START | PRESENT_RW]),
        (PD_START, pd),
    ]
}

/// Writes GDT, IDT and page tables into guest memory.
pub fn write_boot_structures(mem: &GuestMemoryMmap, pvh: bool) -> Result<(), RegsError> {
    let mut gdt = boot_gdt();
    if pvh {
        // The PVH entry starts in 32-bit code: the GDT says what CS holds.
        gdt[1] = super::gdt::CODE32;
    }
    for (i, e) in gdt.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(GDT_START).unchecked_add(i as u64 * 8))?;
    }
    mem.write_obj(0u64, GuestAddress(IDT_START))?;
    for (addr, entries) in identity_page_tables() {
        for (i, e) in entries.iter().enumerate() {
            mem.write_obj(*e, GuestAddress(addr + i as u64 * 8))?;
        }
    }
    Ok(())
}

/// GDT and IDT registers, and flat segments from the boot GDT with `code`
/// (a descriptor) in CS: what both entries share.
fn flat_segments(mut sregs: kvm_sregs, code: u64) -> kvm_sregs {
    let gdt = boot_gdt();
    sregs.gdt.base = GDT_START;
    sregs.gdt.limit = (gdt.len() * 8 - 1) as u16;
    sregs.idt.base = IDT_START;
    sregs.idt.limit = 7;
    let data = segment(gdt[2], 2);
    sregs.cs = segment(code, 1);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment(gdt[3], 3);
    sregs
}

/// Segment and control registers for 64-bit long mode with SSE enabled.
pub fn long_mode_sregs(sregs: kvm_sregs) -> kvm_sregs {
    let mut sregs = flat_segments(sregs, boot_gdt()[1]);
    sregs.cr3 = PML4_START;
    sregs.cr4 |= CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT;
    // Caches on: KVM's reset CR0 has CD and NW set, and under shadow
    // paging (PVM) that makes the guest's memory uncached (~1000× slower).
    // EM off so SSE can run.
    sregs.cr0 =
        (sregs.cr0 | CR0_PE | CR0_PG | CR0_MP | CR0_ET | CR0_NE) & !(CR0_EM | CR0_NW | CR0_CD);
    sregs.efer |= EFER_LME | EFER_LMA;
    sregs
}

/// Segment and control registers for the PVH entry (Xen's HVM direct
/// boot, which Linux and QEMU's `microvm` also use): 32-bit protected
/// mode, paging off, flat segments, no long mode.
pub fn pvh_sregs(sregs: kvm_sregs) -> kvm_sregs {
    let mut sregs = flat_segments(sregs, super::gdt::CODE32);
    sregs.cr0 = (sregs.cr0 | CR0_PE | CR0_ET) & !(CR0_PG | CR0_NW | CR0_CD);
    sregs.cr3 = 0;
    sregs.cr4 = 0;
    sregs.efer = 0;
    sregs
}

/// General registers for the Linux 64-bit entry: `rip` = entry, `rsi` =
/// zero page.
pub fn entry_regs(entry: u64) -> kvm_regs {
    kvm_regs {
        rflags: 0x2,
        rip: entry,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        rsi: ZERO_PAGE_START,
        ..Default::default()
    }
}

/// MSRs reset for a clean boot (as Firecracker does).
pub fn boot_msrs() -> Vec<kvm_msr_entry> {
    const MSR_IA32_SYSENTER_CS: u32 = 0x174;
    const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
    const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
    const MSR_STAR: u32 = 0xc000_0081;
    const MSR_LSTAR: u32 = 0xc000_0082;
    const MSR_CSTAR: u32 = 0xc000_0083;
    const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
    const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
    const MSR_IA32_TSC: u32 = 0x10;
    const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
    const MISC_ENABLE_FAST_STRING: u64 = 1;
    [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
    ]
    .into_iter()
    .map(|(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    })
    .collect()
}

/// CPUID leaf 1, ECX bit 31: "running under a hypervisor". KVM's
/// supported CPUID leaves it clear; a guest that does not see it never
/// looks at the hypervisor leaves (0x4000_0000: "KVMKVMKVM", 0x4000_0001:
/// kvm-clock, PV EOI, …), says "Booting paravirtualized kernel on bare
/// hardware" and calibrates its TSC against a timer tick instead of
/// reading kvm-clock. QEMU and Firecracker set it; so does the monitor.
pub const CPUID_1_ECX_HYPERVISOR: u32 = 1 << 31;

/// Gives each vCPU its APIC id in CPUID leaf 1 and leaf 0xb, and tells the
/// guest it runs under a hypervisor (leaf 1, ECX bit 31).
pub fn patch_cpuid(cpuid: &mut CpuId, cpu_index: u8, cpus: u8) {
    for e in cpuid.as_mut_slice().iter_mut() {
        match e.function {
            1 => {
                e.ecx |= CPUID_1_ECX_HYPERVISOR;
                e.ebx = (e.ebx & 0x00ff_ffff) | (u32::from(cpu_index) << 24);
                // Logical processor count in bits 23:16, HTT (edx bit 28).
                e.ebx = (e.ebx & 0xff00_ffff) | (u32::from(cpus) << 16);
                if cpus > 1 {
                    e.edx |= 1 << 28;
                }
            }
            0xb => e.edx = u32::from(cpu_index),
            _ => {}
        }
    }
}

/// Configures a vCPU for a 64-bit entry at `entry`. Only vCPU 0 runs the
/// guest; others are set up identically and wait (the bare guest is
/// single-threaded, a Linux guest brings them up itself).
pub fn configure_vcpu(
    vcpu: &VcpuFd,
    cpuid: &CpuId,
    index: u8,
    cpus: u8,
    entry: u64,
    pvh: bool,
) -> Result<(), RegsError> {
    let mut cpuid = cpuid.clone();
    patch_cpuid(&mut cpuid, index, cpus);
    vcpu.set_cpuid2(&cpuid).map_err(kvm("CPUID"))?;
    let msrs = Msrs::from_entries(&boot_msrs()).map_err(|_| RegsError::Kvm {
        what: "MSR list",
        source: kvm_ioctls::Error::new(libc::EINVAL),
    })?;
    // Some hosts (PVM) refuse a few of these; setting the rest is enough.
    let set = vcpu.set_msrs(&msrs).map_err(kvm("MSRs"))?;
    if set != boot_msrs().len() {
        tracing::debug!(
            set,
            wanted = boot_msrs().len(),
            "KVM accepted only some boot MSRs"
        );
    }
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(kvm("FPU state"))?;
    let sregs = vcpu.get_sregs().map_err(kvm("special registers (get)"))?;
    let (sregs, regs) = if pvh {
        let regs = kvm_regs {
            rflags: 0x2,
            rip: entry,
            rbx: PVH_INFO_START,
            ..Default::default()
        };
        (pvh_sregs(sregs), regs)
    } else {
        (long_mode_sregs(sregs), entry_regs(entry))
    };
    vcpu.set_sregs(&sregs).map_err(kvm("special registers"))?;
    vcpu.set_regs(&regs).map_err(kvm("registers"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tables_identity_map_one_gib() {
        let t = identity_page_tables();
        assert_eq!(t[0], (PML4_START, vec![PDPT_START | 7]));
        assert_eq!(t[1], (PDPT_START, vec![PD_START | 7]));
        let pd = &t[2].1;
        assert_eq!(pd.len(), 512);
        assert_eq!(pd[0], 0x87);
        assert_eq!(pd[511], (511 << 21) | 0x87);
        assert_eq!((pd.len() as u64) << 21, IDENTITY_MAPPED);
        assert_eq!(t.len(), 3, "nothing above the first GiB is mapped");
    }

    #[test]
    fn boot_structures_land_in_memory() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        write_boot_structures(&mem, false).unwrap();
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4, PDPT_START | 7);
        let code: u64 = mem.read_obj(GuestAddress(GDT_START + 8)).unwrap();
        assert_eq!(code, 0x00af_9b00_0000_ffff);
        let pd_last: u64 = mem.read_obj(GuestAddress(PD_START + 511 * 8)).unwrap();
        assert_eq!(pd_last >> 21, 511);
    }

    #[test]
    fn pvh_entry_is_flat_32_bit_with_paging_off() {
        let s = pvh_sregs(kvm_sregs {
            cr0: CR0_PG | CR0_CD | CR0_NW,
            efer: EFER_LME | EFER_LMA,
            ..Default::default()
        });
        assert_eq!((s.cs.db, s.cs.l, s.cs.selector), (1, 0, 8));
        assert_eq!((s.cs.base, s.cs.limit), (0, 0xffff_ffff));
        assert_eq!(s.ds.selector, 0x10);
        assert_ne!(s.cr0 & CR0_PE, 0);
        assert_eq!(s.cr0 & (CR0_PG | CR0_CD | CR0_NW), 0);
        assert_eq!((s.efer, s.cr4, s.cr3), (0, 0, 0));
        // Long mode, from the same GDT: 64-bit CS.
        let l = long_mode_sregs(kvm_sregs::default());
        assert_eq!((l.cs.db, l.cs.l, l.cs.selector), (0, 1, 8));
    }

    #[test]
    fn long_mode_control_registers() {
        let s = long_mode_sregs(kvm_sregs::default());
        assert_eq!(s.cr3, PML4_START);
        assert_ne!(s.cr0 & CR0_PG, 0);
        assert_ne!(s.cr0 & CR0_PE, 0);
        assert_eq!(s.cr0 & CR0_EM, 0, "EM must be clear for SSE");
        let from_reset = long_mode_sregs(kvm_sregs {
            cr0: 0x6000_0010,
            ..Default::default()
        });
        assert_eq!(from_reset.cr0 & (CR0_CD | CR0_NW), 0, "caches must be on");
        assert_ne!(s.cr4 & CR4_OSFXSR, 0);
        assert_ne!(s.cr4 & CR4_PAE, 0);
        assert_eq!(s.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!(s.cs.l, 1);
        assert_eq!(s.gdt.limit, 47);
    }

    #[test]
    fn entry_registers() {
        let r = entry_regs(0x100000);
        assert_eq!(
            (r.rip, r.rsi, r.rsp, r.rflags),
            (0x100000, ZERO_PAGE_START, BOOT_STACK_POINTER, 2)
        );
    }

    #[test]
    fn cpuid_apic_ids() {
        let mut c = CpuId::new(2).unwrap();
        c.as_mut_slice()[0].function = 1;
        c.as_mut_slice()[0].ebx = 0xffff_ffff;
        c.as_mut_slice()[1].function = 0xb;
        patch_cpuid(&mut c, 3, 4);
        assert_eq!(c.as_slice()[0].ebx >> 24, 3);
        assert_eq!((c.as_slice()[0].ebx >> 16) & 0xff, 4);
        assert_ne!(c.as_slice()[0].edx & (1 << 28), 0);
        assert_ne!(c.as_slice()[0].ecx & CPUID_1_ECX_HYPERVISOR, 0);
        assert_eq!(c.as_slice()[1].edx, 3);
    }
}
