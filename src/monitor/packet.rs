//! IP header parsing shared by the packet monitors (`nfqueue`, `sniff`): bounds
//! checked, never panics, IPv4 and IPv6 (walking the extension headers that may
//! precede the transport header).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why a packet could not be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketError {
    /// Shorter than its headers say, or impossible header values.
    Malformed,
    /// Well formed, but without a transport header to read (a later fragment, too
    /// many extension headers).
    Unsupported,
}

/// (source, destination, transport protocol, transport header and what follows).
pub type IpHeader<'a> = (IpAddr, IpAddr, u8, &'a [u8]);

/// Big-endian u16 at `at`.
pub fn be16(p: &[u8], at: usize) -> Result<u16, PacketError> {
    match p.get(at..at + 2) {
        Some(b) => Ok(u16::from_be_bytes([b[0], b[1]])),
        None => Err(PacketError::Malformed),
    }
}

/// Big-endian u32 at `at`.
pub fn be32(p: &[u8], at: usize) -> Result<u32, PacketError> {
    match p.get(at..at + 4) {
        Some(b) => Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]])),
        None => Err(PacketError::Malformed),
    }
}

/// An IPv4 header.
pub fn ipv4(p: &[u8]) -> Result<IpHeader<'_>, PacketError> {
    if p.len() < 20 || p[0] >> 4 != 4 {
        return Err(PacketError::Malformed);
    }
    let ihl = usize::from(p[0] & 0x0f) * 4;
    if ihl < 20 || p.len() < ihl {
        return Err(PacketError::Malformed);
    }
    if be16(p, 6)? & 0x1fff != 0 {
        // A later fragment: no transport header.
        return Err(PacketError::Unsupported);
    }
    let src = Ipv4Addr::new(p[12], p[13], p[14], p[15]);
    let dst = Ipv4Addr::new(p[16], p[17], p[18], p[19]);
    Ok((src.into(), dst.into(), p[9], &p[ihl..]))
}

/// An IPv6 header and the extension headers after it.
pub fn ipv6(p: &[u8]) -> Result<IpHeader<'_>, PacketError> {
    if p.len() < 40 || p[0] >> 4 != 6 {
        return Err(PacketError::Malformed);
    }
    let addr = |at: usize| {
        let mut a = [0u8; 16];
        a.copy_from_slice(&p[at..at + 16]);
        IpAddr::from(Ipv6Addr::from(a))
    };
    let (mut next, mut rest) = (p[6], &p[40..]);
    // Walk the extension headers that may precede TCP/UDP (at most a few).
    for _ in 0..8 {
        match next {
            // Hop-by-hop, routing, destination options: (length + 1) * 8 bytes.
            0 | 43 | 60 => {
                if rest.len() < 8 {
                    return Err(PacketError::Malformed);
                }
                let len = (usize::from(rest[1]) + 1) * 8;
                if rest.len() < len {
                    return Err(PacketError::Malformed);
                }
                next = rest[0];
                rest = &rest[len..];
            }
            // Fragment: 8 bytes; only the first fragment has the transport header.
            44 => {
                if rest.len() < 8 {
                    return Err(PacketError::Malformed);
                }
                if be16(rest, 2)? & 0xfff8 != 0 {
                    return Err(PacketError::Unsupported);
                }
                next = rest[0];
                rest = &rest[8..];
            }
            _ => return Ok((addr(8), addr(24), next, rest)),
        }
    }
    Err(PacketError::Unsupported)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncated_and_wrong_versions_are_malformed() {
        let mut v4 = vec![0x45u8; 20];
        v4[6] = 0;
        v4[7] = 0;
        assert!(ipv4(&v4).is_ok());
        for n in 0..20 {
            assert_eq!(ipv4(&v4[..n]), Err(PacketError::Malformed));
        }
        assert_eq!(ipv4(&[0x65; 20]), Err(PacketError::Malformed));
        let mut v6 = vec![0u8; 40];
        v6[0] = 0x60;
        v6[6] = 17;
        assert!(ipv6(&v6).is_ok());
        for n in 0..40 {
            assert_eq!(ipv6(&v6[..n]), Err(PacketError::Malformed));
        }
        assert_eq!(be16(&[1], 0), Err(PacketError::Malformed));
        assert_eq!(be32(&[1, 2, 3, 4], 0), Ok(0x01020304));
    }
}
