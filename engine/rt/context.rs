//! The context switch: save the callee-saved registers of the running
//! context on its own stack, store its stack pointer, load another's, pop its
//! registers, return into it.
//!
//! Only what the C ABI requires a callee to preserve is saved (x86_64: rbx,
//! rbp, r12–r15, rsp; aarch64: x19–x29, lr, sp, d8–d15). Everything else is
//! caller-saved, so the compiler has already spilled what it needs before the
//! call. No signal mask is touched: that system call is what makes glibc's
//! `swapcontext` slow, and Ferrite never changes signal masks per coroutine.
//! The floating-point control words (MXCSR, x87 CW) are process-wide settings
//! in Ferrite and are not switched either.

use std::ptr;

#[cfg(target_arch = "x86_64")]
std::arch::global_asm!(
    ".text",
    ".global ferrite_rt_switch",
    ".type ferrite_rt_switch,@function",
    ".p2align 4",
    "ferrite_rt_switch:",
    // rdi: where to store the current stack pointer; rsi: the stack pointer to load.
    "    push rbp",
    "    push rbx",
    "    push r12",
    "    push r13",
    "    push r14",
    "    push r15",
    "    mov [rdi], rsp",
    "    mov rsp, rsi",
    "    pop r15",
    "    pop r14",
    "    pop r13",
    "    pop r12",
    "    pop rbx",
    "    pop rbp",
    "    ret",
    ".size ferrite_rt_switch, .-ferrite_rt_switch",
    "",
    ".global ferrite_rt_finish_switch",
    ".type ferrite_rt_finish_switch,@function",
    ".p2align 4",
    "ferrite_rt_finish_switch:",
    // rdi: the stack pointer to load; rsi: a function to call on that stack
    // before resuming it; rdx: its argument. Nothing is saved: the calling
    // context is finished.
    "    mov rsp, rdi",
    "    mov rdi, rdx",
    // A saved context's sp is 8 mod 16; calls need 0 mod 16.
    "    sub rsp, 8",
    "    call rsi",
    "    add rsp, 8",
    "    pop r15",
    "    pop r14",
    "    pop r13",
    "    pop r12",
    "    pop rbx",
    "    pop rbp",
    "    ret",
    ".size ferrite_rt_finish_switch, .-ferrite_rt_finish_switch",
    "",
    ".global ferrite_rt_trampoline",
    ".type ferrite_rt_trampoline,@function",
    ".p2align 4",
    "ferrite_rt_trampoline:",
    // First entry into a new context: `ret` of the switch lands here with
    // r12 = argument, r13 = entry function and a 16-byte aligned stack.
    "    .cfi_startproc",
    "    .cfi_undefined rip",
    "    mov rdi, r12",
    "    call r13",
    "    ud2",
    "    .cfi_endproc",
    ".size ferrite_rt_trampoline, .-ferrite_rt_trampoline",
);

#[cfg(target_arch = "aarch64")]
std::arch::global_asm!(
    ".text",
    ".global ferrite_rt_switch",
    ".type ferrite_rt_switch,%function",
    ".p2align 4",
    "ferrite_rt_switch:",
    // x0: where to store the current stack pointer; x1: the stack pointer to load.
    "    sub sp, sp, #160",
    "    stp x19, x20, [sp, #0]",
    "    stp x21, x22, [sp, #16]",
    "    stp x23, x24, [sp, #32]",
    "    stp x25, x26, [sp, #48]",
    "    stp x27, x28, [sp, #64]",
    "    stp x29, x30, [sp, #80]",
    "    stp d8, d9, [sp, #96]",
    "    stp d10, d11, [sp, #112]",
    "    stp d12, d13, [sp, #128]",
    "    stp d14, d15, [sp, #144]",
    "    mov x2, sp",
    "    str x2, [x0]",
    "    mov sp, x1",
    "    ldp x19, x20, [sp, #0]",
    "    ldp x21, x22, [sp, #16]",
    "    ldp x23, x24, [sp, #32]",
    "    ldp x25, x26, [sp, #48]",
    "    ldp x27, x28, [sp, #64]",
    "    ldp x29, x30, [sp, #80]",
    "    ldp d8, d9, [sp, #96]",
    "    ldp d10, d11, [sp, #112]",
    "    ldp d12, d13, [sp, #128]",
    "    ldp d14, d15, [sp, #144]",
    "    add sp, sp, #160",
    "    ret",
    ".size ferrite_rt_switch, .-ferrite_rt_switch",
    "",
    ".global ferrite_rt_finish_switch",
    ".type ferrite_rt_finish_switch,%function",
    ".p2align 4",
    "ferrite_rt_finish_switch:",
    // x0: the stack pointer to load; x1: a function to call on that stack
    // before resuming it; x2: its argument.
    "    mov sp, x0",
    "    mov x0, x2",
    "    blr x1",
    "    ldp x19, x20, [sp, #0]",
    "    ldp x21, x22, [sp, #16]",
    "    ldp x23, x24, [sp, #32]",
    "    ldp x25, x26, [sp, #48]",
    "    ldp x27, x28, [sp, #64]",
    "    ldp x29, x30, [sp, #80]",
    "    ldp d8, d9, [sp, #96]",
    "    ldp d10, d11, [sp, #112]",
    "    ldp d12, d13, [sp, #128]",
    "    ldp d14, d15, [sp, #144]",
    "    add sp, sp, #160",
    "    ret",
    ".size ferrite_rt_finish_switch, .-ferrite_rt_finish_switch",
    "",
    ".global ferrite_rt_trampoline",
    ".type ferrite_rt_trampoline,%function",
    ".p2align 4",
    "ferrite_rt_trampoline:",
    // First entry: x19 = argument, x20 = entry function.
    "    .cfi_startproc",
    "    .cfi_undefined x30",
    "    mov x0, x19",
    "    blr x20",
    "    brk #0",
    "    .cfi_endproc",
    ".size ferrite_rt_trampoline, .-ferrite_rt_trampoline",
);

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!("Ferrite's coroutines have a context switch for x86_64 and aarch64 only");

extern "C" {
    fn ferrite_rt_switch(save_sp: *mut *mut u8, load_sp: *mut u8);
    fn ferrite_rt_finish_switch(
        load_sp: *mut u8,
        then: extern "C" fn(*const u8),
        arg: *const u8,
    ) -> !;
    fn ferrite_rt_trampoline();
}

/// The entry point of a new context. It must never return: a finished
/// coroutine switches away for good.
pub(crate) type Entry = extern "C" fn(arg: *mut u8) -> !;

/// Switches from the running context to the one whose stack pointer is
/// `load_sp`, storing the running one's stack pointer in `*save_sp`.
/// Returns when some context switches back to the saved stack pointer.
///
/// # Safety
/// `save_sp` must be valid for a write; `load_sp` must be a stack pointer
/// produced by [`init_stack`] or saved by an earlier `switch`, whose context
/// is not running anywhere and whose stack memory is still alive.
#[inline(always)]
pub(crate) unsafe fn switch(save_sp: *mut *mut u8, load_sp: *mut u8) {
    // SAFETY: forwarded from the caller's contract; the assembly preserves
    // every callee-saved register of the context that gets resumed here.
    unsafe { ferrite_rt_switch(save_sp, load_sp) }
}

/// Leaves the running context for good: loads `load_sp`, calls
/// `then(arg)` on that stack (below its saved registers), then resumes it.
/// Used by a finishing coroutine, so that `then` can recycle the stack it
/// has just left.
///
/// # Safety
/// As for [`switch`]'s `load_sp`; in addition the running context must never
/// be resumed, and `then` must not unwind.
#[inline(always)]
pub(crate) unsafe fn finish_switch(
    load_sp: *mut u8,
    then: extern "C" fn(*const u8),
    arg: *const u8,
) -> ! {
    // SAFETY: forwarded from the caller's contract. The area below a saved
    // sp is free: the suspended code made a call (to the switch), so it has
    // nothing live in a red zone there.
    unsafe { ferrite_rt_finish_switch(load_sp, then, arg) }
}

/// Lays out a first frame at the top of a fresh stack so that switching to
/// the returned stack pointer calls `entry(arg)`.
///
/// # Safety
/// `top` must be the 16-byte aligned, exclusive upper end of writable memory
/// with at least 256 bytes below it.
pub(crate) unsafe fn init_stack(top: *mut u8, entry: Entry, arg: *mut u8) -> *mut u8 {
    debug_assert_eq!(top as usize % 16, 0);
    #[cfg(target_arch = "x86_64")]
    // SAFETY: every write below lands in the 80 bytes under `top`, which the
    // caller guarantees are writable.
    unsafe {
        // [top-16, top): zero padding, the trampoline's fake caller frame.
        let s = top.sub(16) as *mut usize;
        ptr::write(s, 0);
        ptr::write(s.add(1), 0);
        // The switch pops r15, r14, r13, r12, rbx, rbp, then returns; after the
        // return the stack pointer is `s`, 16-byte aligned, as `call` expects.
        let sp = s.sub(7);
        ptr::write(sp, 0); // r15
        ptr::write(sp.add(1), 0); // r14
        ptr::write(sp.add(2), entry as *const () as usize); // r13
        ptr::write(sp.add(3), arg as usize); // r12
        ptr::write(sp.add(4), 0); // rbx
        ptr::write(sp.add(5), 0); // rbp: ends frame-pointer walks
        ptr::write(sp.add(6), ferrite_rt_trampoline as *const () as usize); // return address
        sp as *mut u8
    }
    #[cfg(target_arch = "aarch64")]
    // SAFETY: every write lands in the 176 bytes under `top`.
    unsafe {
        let s = top.sub(16) as *mut usize;
        ptr::write(s, 0);
        ptr::write(s.add(1), 0);
        let sp = (s as *mut u8).sub(160) as *mut usize;
        ptr::write_bytes(sp, 0, 20);
        ptr::write(sp, arg as usize); // x19
        ptr::write(sp.add(1), entry as *const () as usize); // x20
        ptr::write(sp.add(11), ferrite_rt_trampoline as *const () as usize); // x30 (lr)
        sp as *mut u8
    }
}
