//! The lab guest: a bare 64-bit kernel, no OS at all.
//!
//! Entered by the monitor in 64-bit long mode (identity-mapped, SSE on)
//! at `_start` with `rsi` = the Linux boot-params "zero page", exactly as a
//! Linux kernel's 64-bit entry is. It checks the boot params it was given
//! (e820 map, command line), writes its marks to the boot-marker port,
//! runs the scenario named by `isolab.scenario=` on the command line,
//! prints one `@isolab {json}` result line on the serial port, writes its
//! exit status to the exit port and resets through the i8042.
//!
//! Under PVM a guest gets no interrupts or exceptions (a fault ends the VM
//! with a shutdown exit), so everything here polls and nothing faults.
//! PVM also stops a guest at its first SSE instruction (KVM reports an
//! emulation failure), so the guest is built without SSE and uses no
//! `core::fmt` (libcore is precompiled with SSE): numbers are written by
//! hand. A test checks the built image holds no SSE instruction.
#![no_std]
#![no_main]

use core::arch::{asm, global_asm};

// Ports, compute kernels and the scenario catalog: the `isolab-abi`
// crate, built by build.rs as an rlib with this guest's own flags.
use isolab_abi::catalog::name as sc;
use isolab_abi::{kernels, ports};

mod disk;
mod net;
use disk::{disk_scenario, map_device_page, virtio_bases};

const STACK_SIZE: usize = 64 * 1024;
#[no_mangle]
static mut GUEST_STACK: [u8; STACK_SIZE] = [0; STACK_SIZE];

global_asm!(
    ".section .text.entry, \"ax\"",
    ".global _start",
    "_start:",
    "    mov dx, {mark_port}",
    "    mov al, {entry_label}",
    "    out dx, al",
    "    lea rsp, [rip + GUEST_STACK + {stack_size}]",
    "    mov rdi, rsi",
    "    xor esi, esi",
    "    call {main}",
    "2:  jmp 2b",
    mark_port = const ports::MARK_PORT,
    entry_label = const ports::MARK_KERNEL_ENTRY,
    stack_size = const STACK_SIZE,
    main = sym guest_main,
);

// The PVH entry (Xen's PHYS32_ENTRY note), used by QEMU's `microvm`
// machine: 32-bit protected mode, paging off, ebx = hvm_start_info. It
// builds the same identity map and GDT our monitor would have given, turns
// on long mode and joins the 64-bit path with rdi = start info, rsi = 1.
global_asm!(
    ".pushsection .note.Xen, \"a\", @note",
    ".balign 4",
    ".long 4",
    ".long 4",
    ".long 18",
    ".asciz \"Xen\"",
    ".balign 4",
    ".long pvh_start",
    ".balign 4",
    ".popsection",
    ".section .text.pvh, \"ax\"",
    ".code32",
    ".global pvh_start",
    "pvh_start:",
    ".att_syntax",
    "    cli",
    "    movw ${mark_port}, %dx",
    "    movb ${entry_label}, %al",
    "    outb %al, %dx",
    "    movl %ebx, %esi",
    "    movl $PVH_PD, %edi",
    "    movl $0x87, %eax",
    "    movl $512, %ecx",
    "1:  movl %eax, (%edi)",
    "    movl $0, 4(%edi)",
    "    addl $0x200000, %eax",
    "    addl $8, %edi",
    "    loop 1b",
    "    movl $PVH_PD, %eax",
    "    orl $7, %eax",
    "    movl %eax, PVH_PDPT",
    "    movl $PVH_PDPT, %eax",
    "    orl $7, %eax",
    "    movl %eax, PVH_PML4",
    "    movl $PVH_PML4, %eax",
    "    movl %eax, %cr3",
    "    movl %cr4, %eax",
    "    orl $0x620, %eax",
    "    movl %eax, %cr4",
    "    movl $0xC0000080, %ecx",
    "    rdmsr",
    "    orl $0x100, %eax",
    "    wrmsr",
    "    lgdt PVH_GDT_DESC",
    "    movl %cr0, %eax",
    "    andl $0x9ffffffb, %eax",
    "    orl $0x80000023, %eax",
    "    movl %eax, %cr0",
    "    ljmp $0x08, $2f",
    ".code64",
    "2:  movw $0x10, %ax",
    "    movw %ax, %ds",
    "    movw %ax, %es",
    "    movw %ax, %ss",
    "    movw %ax, %fs",
    "    movw %ax, %gs",
    "    leaq GUEST_STACK+{stack_size}(%rip), %rsp",
    "    movl %esi, %edi",
    "    movq $1, %rsi",
    "    call {main}",
    "3:  jmp 3b",
    ".intel_syntax noprefix",
    stack_size = const STACK_SIZE,
    main = sym guest_main,
    mark_port = const ports::MARK_PORT,
    entry_label = const ports::MARK_KERNEL_ENTRY,
);

#[repr(C, align(4096))]
struct Page([u64; 512]);

#[no_mangle]
static mut PVH_PML4: Page = Page([0; 512]);
#[no_mangle]
static mut PVH_PDPT: Page = Page([0; 512]);
#[no_mangle]
static mut PVH_PD: Page = Page([0; 512]);

// GDT for the PVH path: the same six entries our monitor writes.
global_asm!(
    ".pushsection .rodata.pvh, \"a\"",
    ".balign 8",
    "PVH_GDT:",
    ".quad 0",
    ".quad 0x00af9b000000ffff",
    ".quad 0x00cf93000000ffff",
    ".quad 0",
    ".quad 0x00cff3000000ffff",
    ".quad 0x00affb000000ffff",
    "PVH_GDT_DESC:",
    ".word 47",
    ".long PVH_GDT",
    ".popsection",
);

// Drops to ring 3 (IOPL 3, so port I/O still works) and calls `target`
// with rdi unchanged. Used when the command line says `isolab.ring=3`.
global_asm!(
    ".global enter_ring3",
    "enter_ring3:",
    "    mov rax, rsp",
    "    push 0x23",
    "    push rax",
    "    push 0x3002",
    "    push 0x2b",
    "    push rsi",
    "    iretq",
);

extern "C" {
    fn enter_ring3(zero_page: u64, target: extern "C" fn(u64) -> !) -> !;
}

#[inline(always)]
fn outb(port: u16, v: u8) {
    // SAFETY: port I/O only causes a VM exit handled by the monitor.
    unsafe { asm!("out dx, al", in("dx") port, in("al") v, options(nomem, nostack, preserves_flags)) }
}

#[inline(always)]
fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: as above.
    unsafe { asm!("in al, dx", out("al") v, in("dx") port, options(nomem, nostack, preserves_flags)) }
    v
}

fn mark(label: u8) {
    outb(ports::MARK_PORT, label);
}

/// Where `put` writes: the serial port until the workload starts its
/// result line, then the result page (`ports::RESULT_PAGE`), which costs
/// no VM exit at all.
static mut TO_PAGE: bool = false;
static mut PAGE_LEN: usize = 0;
/// `isolab.console=1`: the result line goes to the serial port as well, as
/// it is written, for a human watching the console (or a detached
/// instance's log); runs that are measured leave it off.
static mut CONSOLE: bool = false;

fn put_bytes(s: &[u8]) {
    // SAFETY: single-threaded guest.
    let (to_page, console) = unsafe { (TO_PAGE, CONSOLE) };
    if to_page {
        page_bytes(s);
    }
    if !to_page || console {
        serial_bytes(s)
    }
}

/// Appends to the result page's text, up to the page's end.
fn page_bytes(s: &[u8]) {
    let text = ports::RESULT_PAGE + ports::RESULT_HEADER as u64;
    // SAFETY: single-threaded guest; the page is guest RAM below the
    // guest's own image, identity-mapped, and writes stay inside it.
    unsafe {
        for &b in s {
            if PAGE_LEN >= ports::RESULT_PAGE_SIZE - ports::RESULT_HEADER {
                return;
            }
            core::ptr::write_volatile((text + PAGE_LEN as u64) as *mut u8, b);
            PAGE_LEN += 1;
        }
    }
}

/// Writes the page's header, after its text: a monitor that finds the
/// magic finds the whole text.
fn seal_page() {
    // SAFETY: as in `page_bytes`.
    unsafe {
        core::ptr::write_volatile((ports::RESULT_PAGE + 4) as *mut u32, PAGE_LEN as u32);
        core::ptr::write_volatile(ports::RESULT_PAGE as *mut u32, ports::RESULT_MAGIC);
        TO_PAGE = false;
    }
}

/// Writes bytes to the 16550: wait for the transmitter to be empty, then
/// write up to 16 bytes (the FIFO's depth) before looking again. Every
/// port access is a VM exit, so this halves the exits of a byte-by-byte
/// poll.
fn serial_bytes(s: &[u8]) {
    for chunk in s.chunks(16) {
        let mut spins = 0u32;
        while inb(0x3fd) & 0x20 == 0 && spins < 100_000 {
            spins += 1;
        }
        for &b in chunk {
            outb(0x3f8, b);
        }
    }
}

fn put(s: &str) {
    put_bytes(s.as_bytes());
}

fn put_u64(v: u64) {
    let mut buf = [0u8; 20];
    put_bytes(kernels::fmt_u64(v, &mut buf));
}

fn put_hex16(v: u64) {
    let digits = b"0123456789abcdef";
    let mut buf = [0u8; 16];
    for (i, b) in buf.iter_mut().enumerate() {
        *b = digits[((v >> (60 - 4 * i)) & 0xf) as usize];
    }
    put_bytes(&buf);
}

fn finish(code: u8) -> ! {
    mark(ports::MARK_DONE);
    outb(ports::EXIT_PORT, code);
    // i8042 "pulse reset line": the monitor ends the VM.
    outb(0x64, 0xfe);
    loop {
        core::hint::spin_loop();
    }
}

/// Reads a little-endian value from guest-physical memory (identity map).
fn peek<T: Copy>(addr: u64) -> T {
    // SAFETY: the monitor identity-maps guest RAM; callers pass addresses
    // inside the zero page or the command line it wrote.
    unsafe { core::ptr::read_unaligned(addr as *const T) }
}

#[derive(Clone, Copy)]
struct Params {
    e820_entries: u8,
    ram_bytes: u64,
    cmdline: &'static [u8],
    own_range_is_ram: bool,
}

/// Reads Xen's `hvm_start_info` (PVH boot): memory map and command line.
fn read_params_pvh(info: u64) -> Result<Params, &'static str> {
    if info == 0 || peek::<u32>(info) != 0x336e_c578 {
        return Err("PVH start info lacks its magic");
    }
    let cmdline_paddr = peek::<u64>(info + 24);
    let memmap = peek::<u64>(info + 40);
    let n = peek::<u32>(info + 48);
    if memmap == 0 || n == 0 || n > 128 {
        return Err("PVH memory map is empty or too long");
    }
    let mut ram = 0u64;
    let mut own = false;
    for i in 0..n as u64 {
        let e = memmap + i * 24;
        let (addr, size, kind) = (peek::<u64>(e), peek::<u64>(e + 8), peek::<u32>(e + 16));
        if kind == 1 {
            ram += size;
            if addr <= 0x20_0000 && addr + size >= 0x40_0000 {
                own = true;
            }
        }
    }
    if cmdline_paddr == 0 {
        return Err("no command line");
    }
    let mut len = 0;
    while len < 4096 && peek::<u8>(cmdline_paddr + len as u64) != 0 {
        len += 1;
    }
    // SAFETY: [cmdline_paddr, +len) was just read byte by byte.
    let cmdline = unsafe { core::slice::from_raw_parts(cmdline_paddr as *const u8, len) };
    Ok(Params { e820_entries: n as u8, ram_bytes: ram, cmdline, own_range_is_ram: own })
}

static mut PARAMS: Option<Params> = None;

fn read_params(zero_page: u64) -> Result<Params, &'static str> {
    if zero_page == 0 {
        return Err("no boot params (rsi = 0)");
    }
    if peek::<u16>(zero_page + 0x1fe) != 0xaa55 || peek::<u32>(zero_page + 0x202) != 0x5372_6448 {
        return Err("boot params lack the setup header magic");
    }
    let n = peek::<u8>(zero_page + 0x1e8);
    if n == 0 || n > 128 {
        return Err("e820 map is empty or too long");
    }
    let mut ram = 0u64;
    let mut own = false;
    for i in 0..n as u64 {
        let e = zero_page + 0x2d0 + i * 20;
        let (addr, size, kind) = (peek::<u64>(e), peek::<u64>(e + 8), peek::<u32>(e + 16));
        if kind == 1 {
            ram += size;
            if addr <= 0x20_0000 && addr + size >= 0x40_0000 {
                own = true;
            }
        }
    }
    let ptr = peek::<u32>(zero_page + 0x228) as u64 | ((peek::<u32>(zero_page + 0xc8) as u64) << 32);
    let size = peek::<u32>(zero_page + 0x238) as usize;
    if ptr == 0 {
        return Err("no command line");
    }
    let mut len = 0;
    while len < size.min(4096) && peek::<u8>(ptr + len as u64) != 0 {
        len += 1;
    }
    // SAFETY: [ptr, ptr+len) was just read byte by byte.
    let cmdline = unsafe { core::slice::from_raw_parts(ptr as *const u8, len) };
    Ok(Params { e820_entries: n, ram_bytes: ram, cmdline, own_range_is_ram: own })
}

fn arg<'a>(cmdline: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    cmdline
        .split(|&c| c == b' ')
        .find_map(|tok| tok.strip_prefix(key).and_then(|r| r.strip_prefix(b"=")))
}

fn arg_u64(cmdline: &[u8], key: &[u8], default: u64) -> u64 {
    let Some(v) = arg(cmdline, key) else { return default };
    let mut n: u64 = 0;
    for &c in v {
        if !c.is_ascii_digit() {
            return default;
        }
        n = n.saturating_mul(10).saturating_add((c - b'0') as u64);
    }
    n
}

fn json_str(s: &[u8]) {
    put("\"");
    for &c in s {
        let ch = if c == b'"' || c == b'\\' || !(0x20..0x7f).contains(&c) { b'?' } else { c };
        put_bytes(&[ch]);
    }
    put("\"");
}

/// Ring 0: check the boot params, then run the workload in ring 3 (or
/// here, with `isolab.ring=0`).
///
/// Why ring 3: under PVM the guest's ring 0 runs in KVM's instruction
/// emulator (~5 µs per loop iteration here), while ring 3 runs natively on
/// the CPU (~1 ns). On hardware KVM both run natively; the `ring` field of
/// the result says where the workload ran.
extern "C" fn guest_main(boot_info: u64, pvh: u64) -> ! {
    let params = match if pvh == 1 { read_params_pvh(boot_info) } else { read_params(boot_info) } {
        Ok(p) => p,
        Err(e) => {
            put("@isolab {\"v\":1,\"scenario\":\"?\",\"ok\":false,\"error\":\"");
            put(e);
            put("\"}\n");
            finish(3);
        }
    };
    mark(ports::MARK_PARAMS_CHECKED);
    for base in virtio_bases(params.cmdline) {
        map_device_page(base);
    }
    // SAFETY: single-threaded guest; written once before the workload runs.
    unsafe {
        PARAMS = Some(params);
        CONSOLE = arg(params.cmdline, b"isolab.console") == Some(b"1");
    }
    if arg(params.cmdline, b"isolab.ring") == Some(b"0") {
        workload(0)
    }
    // SAFETY: an iretq to our own code with a valid user stack (the same
    // stack, identity-mapped and user-accessible).
    unsafe { enter_ring3(0, workload) }
}

/// The scenario, in whichever ring `guest_main` chose.
extern "C" fn workload(_: u64) -> ! {
    // SAFETY: set by guest_main before we were entered.
    let Some(params) = (unsafe { PARAMS }) else { finish(3) };
    let ring: u64;
    // SAFETY: reading CS has no side effects.
    unsafe { asm!("mov {0:r}, cs", out(reg) ring, options(nomem, nostack, preserves_flags)) };
    let scenario = arg(params.cmdline, b"isolab.scenario").unwrap_or(sc::STARTUP.as_bytes());
    mark(ports::MARK_READY);
    // QEMU's harness has no boot-marker port: this one byte is its ready.
    outb(0x3f8, ports::READY_BYTE);
    // The result line goes to the result page (see `ports::RESULT_PAGE`).
    // SAFETY: single-threaded guest.
    unsafe { TO_PAGE = true };
    let mut ok = true;
    put("@isolab {\"v\":1,\"scenario\":");
    json_str(scenario);
    put(",\"data\":{");
    match core::str::from_utf8(scenario).unwrap_or("") {
        sc::STARTUP => {}
        sc::CPU => {
            let blocks = arg_u64(params.cmdline, b"isolab.blocks", kernels::CPU_CHECK_BLOCKS * 100);
            mark(ports::MARK_WORK_START);
            let sum = kernels::cpu_work(blocks);
            mark(ports::MARK_WORK_END);
            put("\"checksum\":\"");
            put_hex16(sum);
            put("\",\"blocks\":");
            put_u64(blocks);
            put(",");
        }
        sc::MEMORY => ok = memory_scenario(&params),
        sc::SPIN => spin_scenario(&params),
        sc::ECHO_INPUT => echo_input_scenario(&params),
        // Misbehaviour on purpose, for the monitor's tests.
        sc::HANG => loop {
            core::hint::spin_loop();
        },
        sc::FLOOD => loop {
            serial_bytes(b"flood flood flood flood flood flood flood flood flood flood\n");
        },
        sc::UNKNOWN_IO => unknown_io_scenario(&params),
        sc::HOSTILE_IO => ok = hostile_io_scenario(&params),
        sc::IDLE => idle_scenario(&params),
        sc::FAULT => {
            // Ring 3 with no IDT: the #UD cannot be delivered, the VM shuts
            // down (a triple fault on hardware; under PVM, any fault).
            // SAFETY: deliberately undefined instruction.
            unsafe { asm!("ud2", options(nomem, nostack)) };
        }
        sc::EXIT_COST => exit_cost_scenario(&params),
        // Reads its virtio-blk disk end to end (or `isolab.kib`) by
        // polling, as a driver with no interrupts must: the monitor's
        // device model, exercised by a guest.
        sc::DISK_READ | sc::NET_RTT | sc::NET_STREAM | sc::NET_ECHO => {
            let run = match core::str::from_utf8(scenario).unwrap_or("") {
                sc::DISK_READ => disk_scenario,
                sc::NET_RTT => net::rtt_scenario,
                sc::NET_STREAM => net::stream_scenario,
                _ => net::echo_scenario,
            };
            if let Err(e) = run(params.cmdline) {
                ok = false;
                put("\"error_detail\":\"");
                put(e);
                put("\",");
            }
        }
        _ => ok = false,
    }
    put("\"ring\":");
    put_u64(ring & 3);
    put(",\"e820_entries\":");
    put_u64(params.e820_entries as u64);
    put(",\"ram_bytes\":");
    put_u64(params.ram_bytes);
    put(",\"own_range_is_ram\":");
    put(if params.own_range_is_ram { "true" } else { "false" });
    put(",\"cmdline_len\":");
    put_u64(params.cmdline.len() as u64);
    put("},\"ok\":");
    put(if ok { "true" } else { "false" });
    if !ok {
        put(",\"error\":\"unknown scenario or bad parameter\"");
    }
    put("}\n");
    seal_page();
    finish(if ok { arg_u64(params.cmdline, b"isolab.exit", 0) as u8 } else { 2 })
}

/// Idle: says it holds, on the serial port, so the harness reads the
/// instance's memory with the workload in place; with `isolab.hold_wait=1`
/// it then waits (bounded) for the harness's go-on byte on the serial
/// port, as the agent idles while the harness reads a container's.
fn idle_scenario(params: &Params) {
    serial_bytes(ports::HOLD_LINE.as_bytes());
    serial_bytes(b"\n");
    let mut released = false;
    if arg(params.cmdline, b"isolab.hold_wait") == Some(b"1") {
        // Every poll is a VM exit (~40 us under PVM, ~1 us on hardware).
        let mut spins = 0u32;
        while inb(0x3fd) & 1 == 0 && spins < 250_000 {
            spins += 1;
        }
        released = inb(0x3fd) & 1 != 0;
        if released {
            let _ = inb(0x3f8);
        }
    }
    put("\"released\":");
    put(if released { "true" } else { "false" });
    put(",");
}

/// Touches `isolab.mib` MiB above 32 MiB, a page at a time.
fn memory_scenario(params: &Params) -> bool {
    let mib = arg_u64(params.cmdline, b"isolab.mib", 16);
    let base: u64 = 32 << 20;
    let end = base + (mib << 20);
    // The monitor maps the first GiB; stay inside RAM and the map.
    if end > params.ram_bytes.min(1 << 30) {
        return false;
        put("\"error_detail\":\"the memory does not fit above 32 MiB in guest RAM\",");
    } else {
        mark(ports::MARK_WORK_START);
        let mut a = base;
        while a < end {
            // SAFETY: [base, end) is RAM per e820 and identity-mapped.
            unsafe { core::ptr::write_volatile(a as *mut u8, 1) };
            a += 4096;
        }
        mark(ports::MARK_WORK_END);
        put("\"mib\":");
        put_u64(mib);
        put(",\"pages\":");
        put_u64((end - base) / 4096);
        put(",");
    }
    true
}

/// A register-only loop (`isolab.mem=1` adds a store).
fn spin_scenario(params: &Params) {
    let n = arg_u64(params.cmdline, b"isolab.n", 1000);
    let mem = arg_u64(params.cmdline, b"isolab.mem", 0);
    mark(ports::MARK_WORK_START);
    let mut x = 0u64;
    let mut buf = [0u64; 8];
    for i in 0..n {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(i);
        if mem != 0 {
            // SAFETY: in-bounds stack array.
            unsafe { core::ptr::write_volatile(&mut buf[(i & 7) as usize], x) };
        }
    }
    mark(ports::MARK_WORK_END);
    put("\"x\":");
    put_u64(x ^ buf[0]);
    put(",");
}

/// Reads a line from the serial port (polling the data-ready bit)
/// and reports it: the serial input path, end to end.
fn echo_input_scenario(_params: &Params) {
    let mut line = [0u8; 64];
    let mut n = 0;
    while n < line.len() {
        let mut spins = 0u64;
        while inb(0x3fd) & 1 == 0 && spins < 50_000_000 {
            spins += 1;
        }
        if spins >= 50_000_000 {
            break;
        }
        let c = inb(0x3f8);
        if c == b'\n' || c == b'\r' {
            break;
        }
        line[n] = c;
        n += 1;
    }
    put("\"input\":");
    json_str(&line[..n]);
    put(",");
}

/// Touches a port and an address no device answers.
fn unknown_io_scenario(_params: &Params) {
    outb(0x1234, 0xab);
    let _ = inb(0x1235);
    // SAFETY: an address below 1 GiB (mapped) but above guest RAM, with no
    // device: the
    // monitor answers all ones and ignores the write.
    unsafe {
        core::ptr::write_volatile(0x3ff0_0000 as *mut u32, 0xdead_beef);
        let v = core::ptr::read_volatile(0x3ff0_0000 as *const u32);
        put("\"mmio_read\":");
        put_u64(v as u64);
        put(",");
    }
}

/// xorshift64*: the hostile scenario's random numbers.
fn next_random(x: &mut u64) -> u64 {
    *x ^= *x >> 12;
    *x ^= *x << 25;
    *x ^= *x >> 27;
    x.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

/// A hostile guest, for the monitor's tests: every port from 0 to
/// `isolab.ports` (but the i8042's reset and the exit port) read and
/// written with random bytes, then `isolab.n` random accesses to each
/// virtio window on the command line (and the window after it, where no
/// device may be). Register offsets favour the ones that matter (status,
/// queue select/size/ready/notify, ring addresses), values are random or
/// small, and ring addresses point as often as not into a MiB of random
/// bytes: descriptor loops, wrapped and jumping indices, aliased buffers,
/// rings past the end of memory. The monitor must answer or reset the
/// device, and never panic or grow.
fn hostile_io_scenario(params: &Params) -> bool {
    // The random rings live at 48 MiB: refuse a smaller guest rather
    // than write past its RAM.
    if params.ram_bytes < 49 << 20 {
        put("\"error_detail\":\"hostile-io needs --mem 64 or more\",");
        return false;
    }
    let mut x = arg_u64(params.cmdline, b"isolab.seed", 0x9e37_79b9_7f4a_7c15) | 1;
    let ports = arg_u64(params.cmdline, b"isolab.ports", 0x1000).min(0x1_0000);
    let n = arg_u64(params.cmdline, b"isolab.n", 2000);
    mark(ports::MARK_WORK_START);
    let mut port_accesses = 0u64;
    for port in 0..ports {
        let port = port as u16;
        if port == 0x64 || port == ports::EXIT_PORT {
            continue;
        }
        outb(port, next_random(&mut x) as u8);
        let _ = inb(port);
        port_accesses += 2;
    }
    // Random rings to point queues at: 1 MiB at 48 MiB (guest RAM is at
    // least 64 MiB here; the test asks for it).
    let junk: u64 = 48 << 20;
    // Each 16 bytes read as a descriptor, as a ring entry or as an index:
    // mostly inside the junk (so chains are followed: loops, aliases,
    // indirect tables), sometimes anywhere at all.
    for off in (0..(1u64 << 20)).step_by(16) {
        let r = next_random(&mut x);
        let addr = if r & 7 == 0 { next_random(&mut x) } else { junk + ((r >> 4) & 0xf_fff0) };
        let len = if r & 0x70 == 0 { r >> 32 } else { (r >> 24) & 0x3fff };
        let flags = (r >> 44) & 7;
        let next = (r >> 48) & 0xff;
        // SAFETY: guest RAM, identity-mapped, used by nothing else.
        unsafe {
            core::ptr::write_volatile((junk + off) as *mut u64, addr);
            core::ptr::write_volatile((junk + off + 8) as *mut u64, len | flags << 32 | next << 48);
        }
    }
    const REGS: [u64; 16] = [
        0x70, 0x70, 0x30, 0x38, 0x44, 0x50, 0x50, 0x80, 0x84, 0x90, 0x94, 0xa0, 0xa4, 0x14, 0x20,
        0x24,
    ];
    let mut mmio_accesses = 0u64;
    for base in virtio_bases(params.cmdline) {
        for window in [base, base + 0x1000] {
            // SAFETY (both closures): the window is mapped uncached by
            // guest_main; MMIO exits the monitor answers.
            let wr = |off: u64, v: u64| unsafe {
                core::ptr::write_volatile((window + off) as *mut u32, v as u32)
            };
            for i in 0..n {
                // Every 50th access, a driver's handshake done right, with
                // a random queue size and the rings in the random bytes,
                // then notifies: the device's request path, fed garbage.
                if i % 50 == 0 {
                    let r = next_random(&mut x);
                    let avail = junk + ((r >> 20) & 0xf_f000);
                    // A small available index, so the device reads the
                    // entries (and the descriptors they name).
                    // SAFETY: inside the junk MiB.
                    unsafe { core::ptr::write_volatile((avail + 2) as *mut u16, (r >> 56) as u16 & 7) };
                    for (off, v) in [
                        (0x70, 0),
                        (0x70, 1),
                        (0x70, 3),
                        (0x24, 1),
                        (0x20, 1),
                        (0x70, 11),
                        (0x30, 0),
                        (0x38, 1 << (r & 7)),
                        (0x80, junk + ((r >> 8) & 0xf_f000)),
                        (0x90, avail),
                        (0xa0, junk + ((r >> 32) & 0xf_f000)),
                        (0x44, 1),
                        (0x70, 15),
                        (0x50, 0),
                        (0x50, 0),
                    ] {
                        wr(off, v);
                        mmio_accesses += 1;
                    }
                    continue;
                }
                let r = next_random(&mut x);
                let off = if r & 3 != 0 {
                    REGS[((r >> 2) & 15) as usize]
                } else {
                    (r >> 8) & 0x1fc
                };
                let v = match (r >> 20) & 3 {
                    0 => (r >> 32) & 7,
                    1 => junk + ((r >> 24) & 0xf_fff0),
                    2 => 1,
                    _ => r >> 32,
                };
                let at = (window + off) as *mut u32;
                // SAFETY: a device window the command line announced (or
                // the one after it), mapped uncached by guest_main: MMIO
                // exits the monitor answers, nothing in guest RAM.
                unsafe {
                    if (r >> 40) & 7 == 0 {
                        let _ = core::ptr::read_volatile(at);
                    } else {
                        core::ptr::write_volatile(at, v as u32);
                    }
                }
                mmio_accesses += 1;
            }
        }
    }
    mark(ports::MARK_WORK_END);
    put("\"port_accesses\":");
    put_u64(port_accesses);
    put(",\"mmio_accesses\":");
    put_u64(mmio_accesses);
    put(",");
    true
}

/// Writes to the no-op port `isolab.exits` times: what one exit costs.
fn exit_cost_scenario(params: &Params) {
    let n = arg_u64(params.cmdline, b"isolab.exits", 10_000);
    mark(ports::MARK_WORK_START);
    for _ in 0..n {
        outb(ports::NOP_PORT, 0);
    }
    mark(ports::MARK_WORK_END);
    put("\"exits\":");
    put_u64(n);
    put(",");
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    // SAFETY: single-threaded guest.
    unsafe { TO_PAGE = false };
    put("@isolab {\"v\":1,\"scenario\":\"?\",\"ok\":false,\"error\":\"guest panic\"}\n");
    finish(101)
}

// With no libc, the compiler's calls to these must be served here. Plain
// volatile loops: volatile accesses cannot be turned back into calls to
// these very functions, and `rep movs`/`rep stos` trap to KVM's
// instruction emulator under PVM (thousands of times slower).
#[no_mangle]
unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    let mut i = 0;
    // SAFETY: the caller guarantees valid, non-overlapping ranges of n bytes.
    unsafe {
        while i + 8 <= n {
            let v = core::ptr::read_volatile(src.add(i) as *const u64);
            core::ptr::write_volatile(dst.add(i) as *mut u64, v);
            i += 8;
        }
        while i < n {
            core::ptr::write_volatile(dst.add(i), core::ptr::read_volatile(src.add(i)));
            i += 1;
        }
    }
    dst
}

#[no_mangle]
unsafe extern "C" fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dst as usize) <= (src as usize) || (dst as usize) >= (src as usize + n) {
        // SAFETY: a forward copy is correct when dst is below src or disjoint.
        return unsafe { memcpy(dst, src, n) };
    }
    let mut i = n;
    // SAFETY: backward byte copy for an overlapping dst above src.
    unsafe {
        while i > 0 {
            i -= 1;
            core::ptr::write_volatile(dst.add(i), core::ptr::read_volatile(src.add(i)));
        }
    }
    dst
}

#[no_mangle]
unsafe extern "C" fn memset(dst: *mut u8, v: i32, n: usize) -> *mut u8 {
    let mut i = 0;
    // SAFETY: the caller guarantees a valid range of n bytes.
    unsafe {
        while i < n {
            core::ptr::write_volatile(dst.add(i), v as u8);
            i += 1;
        }
    }
    dst
}

#[no_mangle]
unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    let mut i = 0;
    while i < n {
        // SAFETY: the caller guarantees valid ranges of n bytes.
        let (x, y) = unsafe { (core::ptr::read_volatile(a.add(i)), core::ptr::read_volatile(b.add(i))) };
        if x != y {
            return x as i32 - y as i32;
        }
        i += 1;
    }
    0
}

#[no_mangle]
unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract as memcmp.
    unsafe { memcmp(a, b, n) }
}

/// The precompiled `core` is built with unwinding and names this symbol;
/// with panic=abort it is never called.
#[no_mangle]
extern "C" fn rust_eh_personality() {}
