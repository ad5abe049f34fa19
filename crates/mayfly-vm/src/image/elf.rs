//! Just enough ELF64 reading for the image builder: is a binary static (no `PT_INTERP`), and
//! what a kernel module's `.modinfo` says (its `depends=` and `softdep=`). Input is untrusted
//! bytes: every offset is bounds-checked and a malformed file is an error value.

const PT_INTERP: u32 = 3;
const EM_X86_64: u16 = 62;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ElfError {
    #[error("not an ELF file")]
    NotElf,
    #[error("not a 64-bit little-endian x86-64 ELF file")]
    WrongArch,
    #[error("the ELF headers point outside the file")]
    Truncated,
}

fn bytes<const N: usize>(data: &[u8], at: usize) -> Result<[u8; N], ElfError> {
    data.get(at..at.checked_add(N).ok_or(ElfError::Truncated)?)
        .and_then(|s| s.try_into().ok())
        .ok_or(ElfError::Truncated)
}

fn u16_at(data: &[u8], at: usize) -> Result<u16, ElfError> {
    bytes::<2>(data, at).map(u16::from_le_bytes)
}

fn u32_at(data: &[u8], at: usize) -> Result<u32, ElfError> {
    bytes::<4>(data, at).map(u32::from_le_bytes)
}

fn usize_at(data: &[u8], at: usize) -> Result<usize, ElfError> {
    let v = bytes::<8>(data, at).map(u64::from_le_bytes)?;
    usize::try_from(v).map_err(|_| ElfError::Truncated)
}

fn check_header(data: &[u8]) -> Result<(), ElfError> {
    if data.get(..4) != Some(b"\x7fELF".as_slice()) {
        return Err(ElfError::NotElf);
    }
    // EI_CLASS = 2 (64-bit), EI_DATA = 1 (little-endian), e_machine = x86-64.
    if data.get(4) != Some(&2) || data.get(5) != Some(&1) || u16_at(data, 0x12)? != EM_X86_64 {
        return Err(ElfError::WrongArch);
    }
    Ok(())
}

/// Table `(offset, entry size, count)` checked to lie inside the file.
fn table(data: &[u8], off: usize, entsize: u16, count: u16) -> Result<Vec<usize>, ElfError> {
    (0..usize::from(count))
        .map(|i| {
            let start = off
                .checked_add(i * usize::from(entsize))
                .ok_or(ElfError::Truncated)?;
            if start.saturating_add(usize::from(entsize)) > data.len() {
                return Err(ElfError::Truncated);
            }
            Ok(start)
        })
        .collect()
}

/// The program interpreter (`PT_INTERP`) a dynamically linked executable asks for; `None` for a
/// static executable (static-pie included).
pub fn interpreter(data: &[u8]) -> Result<Option<String>, ElfError> {
    check_header(data)?;
    let phoff = usize_at(data, 0x20)?;
    let entries = table(data, phoff, u16_at(data, 0x36)?, u16_at(data, 0x38)?)?;
    for ph in entries {
        if u32_at(data, ph)? == PT_INTERP {
            let off = usize_at(data, ph + 8)?;
            let size = usize_at(data, ph + 32)?;
            let raw = data
                .get(off..off.checked_add(size).ok_or(ElfError::Truncated)?)
                .ok_or(ElfError::Truncated)?;
            let text = raw.split(|b| *b == 0).next().unwrap_or_default();
            return Ok(Some(String::from_utf8_lossy(text).into_owned()));
        }
    }
    Ok(None)
}

/// The contents of the section named `name`, if the file has one.
pub fn section<'a>(data: &'a [u8], name: &str) -> Result<Option<&'a [u8]>, ElfError> {
    check_header(data)?;
    let shoff = usize_at(data, 0x28)?;
    let shentsize = u16_at(data, 0x3a)?;
    let shnum = u16_at(data, 0x3c)?;
    let shstrndx = usize::from(u16_at(data, 0x3e)?);
    let headers = table(data, shoff, shentsize, shnum)?;
    let strtab_header = *headers.get(shstrndx).ok_or(ElfError::Truncated)?;
    let contents = |sh: usize| -> Result<&'a [u8], ElfError> {
        let off = usize_at(data, sh + 24)?;
        let size = usize_at(data, sh + 32)?;
        data.get(off..off.checked_add(size).ok_or(ElfError::Truncated)?)
            .ok_or(ElfError::Truncated)
    };
    let strtab = contents(strtab_header)?;
    for sh in headers {
        let name_off = usize::try_from(u32_at(data, sh)?).map_err(|_| ElfError::Truncated)?;
        let section_name = strtab
            .get(name_off..)
            .and_then(|s| s.split(|b| *b == 0).next())
            .ok_or(ElfError::Truncated)?;
        if section_name == name.as_bytes() {
            return contents(sh).map(Some);
        }
    }
    Ok(None)
}

/// `key=value` pairs of a kernel module's `.modinfo` section, in file order.
pub fn modinfo(data: &[u8]) -> Result<Vec<(String, String)>, ElfError> {
    let Some(section) = section(data, ".modinfo")? else {
        return Ok(Vec::new());
    };
    Ok(section
        .split(|b| *b == 0)
        .filter_map(|entry| {
            let text = std::str::from_utf8(entry).ok()?;
            let (key, value) = text.split_once('=')?;
            Some((key.to_string(), value.to_string()))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn the_test_binary_is_dynamic_and_names_its_interpreter() {
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let interp = interpreter(&exe).unwrap();
        assert!(interp.unwrap().contains("ld-linux"));
        assert!(section(&exe, ".text").unwrap().is_some());
        assert!(section(&exe, ".no-such-section").unwrap().is_none());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert_eq!(interpreter(b"#!/bin/sh\n").unwrap_err(), ElfError::NotElf);
        assert_eq!(
            interpreter(b"\x7fELF\x01\x01").unwrap_err(),
            ElfError::WrongArch
        );
        let mut exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        exe.truncate(200);
        assert!(section(&exe, ".modinfo").is_err());
        // Every prefix of a real header is refused cleanly.
        let full = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        for len in 0..128 {
            let _ = interpreter(&full[..len]);
            let _ = modinfo(&full[..len]);
        }
    }
}
