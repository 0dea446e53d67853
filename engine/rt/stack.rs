//! Coroutine stacks and the per-reactor pool that recycles them.
//!
//! A stack is an anonymous mapping with one `PROT_NONE` guard page below it
//! (stacks grow down): running off the end faults in the guard, and the
//! fault handler in [`super::overflow`] names the coroutine. Mapping and
//! protecting a stack costs two system calls and a TLB shootdown when it is
//! unmapped, so finished coroutines give their stack back to the pool of the
//! reactor they were born on and the next spawn takes it from there.

use ferrite_sys::guarded::GuardedMapping;
use std::cell::RefCell;
use std::io;

/// The default usable size of a coroutine stack.
pub const DEFAULT_STACK_SIZE: usize = 128 * 1024;

/// One coroutine stack.
pub(crate) struct Stack {
    mem: GuardedMapping,
}

impl Stack {
    pub(crate) fn new(size: usize) -> io::Result<Self> {
        Ok(Self {
            mem: GuardedMapping::new(size, 1)?,
        })
    }

    /// The 16-byte aligned upper end, where the first frame goes.
    pub(crate) fn top(&self) -> *mut u8 {
        let top = self.mem.top() as usize;
        (top & !15) as *mut u8
    }

    pub(crate) fn usable_len(&self) -> usize {
        self.mem.usable_len()
    }

    pub(crate) fn guard_range(&self) -> (usize, usize) {
        self.mem.guard_range()
    }
}

/// A free list of stacks of one size, owned by one reactor thread.
pub(crate) struct StackPool {
    size: usize,
    max_cached: usize,
    free: RefCell<Vec<Stack>>,
}

impl StackPool {
    pub(crate) fn new(size: usize, max_cached: usize) -> Self {
        Self {
            size,
            max_cached,
            free: RefCell::new(Vec::new()),
        }
    }

    pub(crate) fn stack_size(&self) -> usize {
        self.size
    }

    /// A stack from the pool, or a new mapping when the pool is empty.
    pub(crate) fn get(&self) -> io::Result<Stack> {
        if let Some(s) = self.free.borrow_mut().pop() {
            return Ok(s);
        }
        Stack::new(self.size)
    }

    /// Returns a stack; beyond `max_cached` free stacks it is unmapped.
    pub(crate) fn put(&self, stack: Stack) {
        let mut free = self.free.borrow_mut();
        if free.len() < self.max_cached && stack.usable_len() >= self.size {
            free.push(stack);
        }
    }

    /// Maps `n` stacks ahead of time so the first spawns do not pay for it.
    pub(crate) fn prefill(&self, n: usize) -> io::Result<()> {
        let n = n.min(self.max_cached);
        let mut free = self.free.borrow_mut();
        while free.len() < n {
            free.push(Stack::new(self.size)?);
        }
        Ok(())
    }
}
