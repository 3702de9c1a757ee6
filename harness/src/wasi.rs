//! The `wasi_snapshot_preview1` functions a Rust `wasm32-wasip1` cdylib pulls in, by hand:
//! stdout/stderr go to the log capture (INFO / ERROR, as the ABI says), clocks come from the
//! harness clock, randomness is seeded. There is no file system: file calls answer `BADF`.

use std::fmt;

use wasmtime::Linker;

use crate::abi::{self, Fail, C};
use crate::state::{HostState, Status};

const SUCCESS: u32 = 0;
const BADF: u32 = 8;
const FAULT: u32 = 21;
const INVAL: u32 = 28;
const NOSYS: u32 = 52;
const NOTSUP: u32 = 58;
const SPIPE: u32 = 70;

/// `proc_exit` unwinds the plugin with this; `_start` ending in `proc_exit(0)` is normal.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ProcExit(pub i32);

impl fmt::Display for ProcExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the plugin called proc_exit({})", self.0)
    }
}

impl std::error::Error for ProcExit {}

/// WASI answers errno values; a bad pointer is `FAULT`.
fn errno(result: abi::R) -> wasmtime::Result<u32> {
    match result {
        Ok(()) => Ok(SUCCESS),
        Err(Fail::Status(Status::InvalidMemoryAccess)) => Ok(FAULT),
        Err(Fail::Status(_)) => Ok(INVAL),
        Err(Fail::Trap(e)) => Err(e),
    }
}

fn fd_write(c: &mut C, fd: u32, iovs: u32, iovs_len: u32, written_ptr: u32) -> wasmtime::Result<u32> {
    if fd != 1 && fd != 2 {
        return Ok(BADF);
    }
    let mut bytes = Vec::new();
    for i in 0..iovs_len {
        let Some(at) = i.checked_mul(8).and_then(|off| iovs.checked_add(off)) else { return Ok(FAULT) };
        let Ok(iov) = abi::read(c, at, 8) else { return Ok(FAULT) };
        let word = |n: usize| iov.get(n..n + 4).and_then(|b| b.try_into().ok()).map(u32::from_le_bytes).unwrap_or(0);
        let Ok(chunk) = abi::read(c, word(0), word(4)) else { return Ok(FAULT) };
        bytes.extend_from_slice(&chunk);
    }
    let written = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    let state = c.data_mut();
    let line = if fd == 1 { &mut state.stdout_line } else { &mut state.stderr_line };
    line.extend_from_slice(&bytes);
    let mut complete = Vec::new();
    while let Some(nl) = line.iter().position(|b| *b == b'\n') {
        let rest = line.split_off(nl + 1);
        let mut done = std::mem::replace(line, rest);
        done.pop();
        complete.push(done);
    }
    for text in complete {
        state.std_line(fd, &text);
    }
    errno(abi::write_u32(c, written_ptr, written))
}

fn environ_sizes(state: &HostState) -> (u32, u32) {
    let size: usize = state.env.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
    (u32::try_from(state.env.len()).unwrap_or(u32::MAX), u32::try_from(size).unwrap_or(u32::MAX))
}

fn environ_get(c: &mut C, environ: u32, buf: u32) -> abi::R {
    let entries: Vec<Vec<u8>> = c.data().env.iter().map(|(k, v)| format!("{k}={v}\0").into_bytes()).collect();
    let mut offset = 0u32;
    for (i, entry) in entries.iter().enumerate() {
        let slot = u32::try_from(i * 4).ok().and_then(|o| environ.checked_add(o)).ok_or(Status::InvalidMemoryAccess)?;
        let at = buf.checked_add(offset).ok_or(Status::InvalidMemoryAccess)?;
        abi::write_u32(c, slot, at)?;
        abi::write(c, at, entry)?;
        offset = offset.saturating_add(u32::try_from(entry.len()).unwrap_or(u32::MAX));
    }
    Ok(())
}

fn fd_fdstat_get(c: &mut C, fd: u32, out: u32) -> wasmtime::Result<u32> {
    if fd > 2 {
        return Ok(BADF);
    }
    // filetype CHARACTER_DEVICE, no flags, rights FD_READ for stdin or FD_WRITE otherwise.
    let rights: u64 = if fd == 0 { 1 << 1 } else { 1 << 6 };
    let mut stat = vec![2u8, 0, 0, 0, 0, 0, 0, 0];
    stat.extend_from_slice(&rights.to_le_bytes());
    stat.extend_from_slice(&[0u8; 8]);
    errno(abi::write(c, out, &stat))
}

/// Adds the WASI preview-1 functions to the linker.
pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    const WASI: &str = "wasi_snapshot_preview1";
    linker.func_wrap(WASI, "fd_write", |mut c: C, fd: u32, iovs: u32, len: u32, out: u32| {
        fd_write(&mut c, fd, iovs, len, out)
    })?;
    linker.func_wrap(WASI, "fd_read", |mut c: C, fd: u32, _iovs: u32, _len: u32, out: u32| {
        // stdin is empty; nothing else is open.
        if fd != 0 {
            return Ok(BADF);
        }
        errno(abi::write_u32(&mut c, out, 0))
    })?;
    linker.func_wrap(WASI, "fd_close", |_c: C, fd: u32| Ok(if fd <= 2 { SUCCESS } else { BADF }))?;
    linker.func_wrap(WASI, "fd_seek", |_c: C, fd: u32, _offset: i64, _whence: u32, _out: u32| {
        Ok(if fd <= 2 { SPIPE } else { BADF })
    })?;
    linker.func_wrap(WASI, "fd_fdstat_get", |mut c: C, fd: u32, out: u32| fd_fdstat_get(&mut c, fd, out))?;
    linker.func_wrap(WASI, "fd_fdstat_set_flags", |_c: C, fd: u32, _flags: u32| Ok(if fd <= 2 { SUCCESS } else { BADF }))?;
    linker.func_wrap(WASI, "fd_filestat_get", |_c: C, _fd: u32, _out: u32| Ok(BADF))?;
    // No preopened directories: wasi-libc's scan stops at the first BADF.
    linker.func_wrap(WASI, "fd_prestat_get", |_c: C, _fd: u32, _out: u32| Ok(BADF))?;
    linker.func_wrap(WASI, "fd_prestat_dir_name", |_c: C, _fd: u32, _p: u32, _l: u32| Ok(BADF))?;
    linker.func_wrap(
        WASI,
        "path_open",
        |_c: C, _fd: u32, _df: u32, _p: u32, _l: u32, _of: u32, _rb: u64, _ri: u64, _ff: u32, _out: u32| Ok(BADF),
    )?;
    linker.func_wrap(WASI, "args_sizes_get", |mut c: C, argc: u32, size: u32| {
        errno(abi::write_u32(&mut c, argc, 0).and_then(|()| abi::write_u32(&mut c, size, 0)))
    })?;
    linker.func_wrap(WASI, "args_get", |_c: C, _argv: u32, _buf: u32| Ok(SUCCESS))?;
    linker.func_wrap(WASI, "environ_sizes_get", |mut c: C, count_ptr: u32, size_ptr: u32| {
        let (count, size) = environ_sizes(c.data());
        errno(abi::write_u32(&mut c, count_ptr, count).and_then(|()| abi::write_u32(&mut c, size_ptr, size)))
    })?;
    linker.func_wrap(WASI, "environ_get", |mut c: C, environ: u32, buf: u32| errno(environ_get(&mut c, environ, buf)))?;
    linker.func_wrap(WASI, "clock_time_get", |mut c: C, id: u32, _precision: u64, out: u32| {
        let clock = c.data().clock;
        let now = match id {
            0 => clock.realtime_ns,
            1 => clock.monotonic_ns,
            _ => return Ok(NOTSUP),
        };
        errno(abi::write_u64(&mut c, out, now))
    })?;
    linker.func_wrap(WASI, "clock_res_get", |mut c: C, id: u32, out: u32| {
        if id > 1 {
            return Ok(NOTSUP);
        }
        errno(abi::write_u64(&mut c, out, 1))
    })?;
    linker.func_wrap(WASI, "random_get", |mut c: C, buf: u32, len: u32| {
        let mut bytes = vec![0u8; len as usize];
        c.data_mut().random_bytes(&mut bytes);
        errno(abi::write(&mut c, buf, &bytes))
    })?;
    linker.func_wrap(WASI, "sched_yield", |_c: C| Ok(SUCCESS))?;
    linker.func_wrap(WASI, "poll_oneoff", |_c: C, _in: u32, _out: u32, _n: u32, _events: u32| Ok(NOTSUP))?;
    linker.func_wrap(WASI, "proc_raise", |_c: C, _signal: u32| Ok(NOSYS))?;
    linker.func_wrap(WASI, "proc_exit", |mut c: C, code: i32| -> wasmtime::Result<()> {
        c.data_mut().proc_exit = Some(code);
        Err(wasmtime::Error::new(ProcExit(code)))
    })?;
    Ok(())
}
