//! Names and addresses of one VM's network, derived from its index alone, so that a reaper
//! that only finds a leftover name on the host can rebuild everything it needs to tear it down.
//! Index `i` owns the /30 block `10.201.0.0 + 4·i`: `.1` is the host side, `.2` the namespace.

use std::net::Ipv4Addr;

use super::NetworkError;

/// The smallest index a VM network may use (block 0 is never handed out).
pub const MIN_INDEX: u32 = 1;
/// The largest index a VM network may use: the last /30 inside 10.201.0.0/16.
pub const MAX_INDEX: u32 = 16383;

/// Prefix of every VM network namespace (`mayfly-vm-<index>`).
pub const NETNS_PREFIX: &str = "mayfly-vm-";
/// Prefix of every host-side VM veth (`mfv<index>`); the host nftables rules match on it.
pub const VETH_PREFIX: &str = "mfv";
/// The address block all VM networks live in.
pub const VM_SUPERNET: &str = "10.201.0.0/16";
/// Prefix length of one VM's point-to-point link.
pub const LINK_PREFIX_LEN: u8 = 30;

const SUPERNET_BASE: u32 = u32::from_be_bytes([10, 201, 0, 0]);

/// Everything about one VM network that follows from its index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Addressing {
    pub index: u32,
    pub netns: String,
    pub host_veth: String,
    pub host_addr: Ipv4Addr,
    pub guest_addr: Ipv4Addr,
}

impl Addressing {
    pub fn for_index(index: u32) -> Result<Self, NetworkError> {
        if !(MIN_INDEX..=MAX_INDEX).contains(&index) {
            return Err(NetworkError::InvalidIndex { index });
        }
        let block = SUPERNET_BASE + index * 4;
        Ok(Self {
            index,
            netns: format!("{NETNS_PREFIX}{index}"),
            host_veth: format!("{VETH_PREFIX}{index}"),
            host_addr: Ipv4Addr::from(block + 1),
            guest_addr: Ipv4Addr::from(block + 2),
        })
    }
}

/// The index in a name like `mayfly-vm-12` (netns) or `mfv12` (veth), if it is one of ours.
pub(crate) fn index_from_name(name: &str) -> Option<u32> {
    let digits = name
        .strip_prefix(NETNS_PREFIX)
        .or_else(|| name.strip_prefix(VETH_PREFIX))?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || digits.starts_with('0') {
        return None;
    }
    let index: u32 = digits.parse().ok()?;
    (MIN_INDEX..=MAX_INDEX).contains(&index).then_some(index)
}

/// The network a host address belongs to, as `a.b.c.d/len` (for the host-subnet drop set).
pub(crate) fn network_of(addr: Ipv4Addr, prefix_len: u8) -> String {
    let len = prefix_len.min(32);
    let mask = if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    };
    format!("{}/{len}", Ipv4Addr::from(u32::from(addr) & mask))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn blocks_do_not_overlap_and_stay_inside_the_supernet() {
        let first = Addressing::for_index(1).unwrap();
        assert_eq!(first.host_addr, Ipv4Addr::new(10, 201, 0, 5));
        assert_eq!(first.guest_addr, Ipv4Addr::new(10, 201, 0, 6));
        let a = Addressing::for_index(64).unwrap();
        assert_eq!(a.host_addr, Ipv4Addr::new(10, 201, 1, 1));
        let last = Addressing::for_index(MAX_INDEX).unwrap();
        assert_eq!(last.guest_addr, Ipv4Addr::new(10, 201, 255, 254));
        assert_eq!(last.host_veth, "mfv16383");
        assert!(last.host_veth.len() <= 15);
    }

    #[test]
    fn out_of_range_indexes_are_refused() {
        assert!(Addressing::for_index(0).is_err());
        assert!(Addressing::for_index(MAX_INDEX + 1).is_err());
    }

    #[test]
    fn names_parse_back_to_indexes() {
        assert_eq!(index_from_name("mayfly-vm-17"), Some(17));
        assert_eq!(index_from_name("mfv16000"), Some(16000));
        assert_eq!(index_from_name("mfv"), None);
        assert_eq!(index_from_name("mfv07"), None);
        assert_eq!(index_from_name("mfinet0"), None);
        assert_eq!(index_from_name("mayfly-inet"), None);
        assert_eq!(index_from_name("mfv99999"), None);
        assert_eq!(index_from_name("mfv1x"), None);
    }

    #[test]
    fn network_of_masks_host_bits() {
        assert_eq!(network_of(Ipv4Addr::new(192, 0, 2, 2), 24), "192.0.2.0/24");
        assert_eq!(
            network_of(Ipv4Addr::new(203, 0, 113, 9), 32),
            "203.0.113.9/32"
        );
        assert_eq!(network_of(Ipv4Addr::new(1, 2, 3, 4), 0), "0.0.0.0/0");
    }
}
