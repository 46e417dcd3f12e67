//! The publisher's address as every journal format stores it:
//! `family u8 (4|6) | ip (4|16) | port u16`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Appends `from`.
pub(super) fn encode(out: &mut Vec<u8>, from: SocketAddr) {
    match from.ip() {
        IpAddr::V4(ip) => {
            out.push(4);
            out.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.push(6);
            out.extend_from_slice(&ip.octets());
        }
    }
    out.extend_from_slice(&from.port().to_le_bytes());
}

/// The address at `at` in `body`, and where the bytes after it start.
pub(super) fn decode(body: &[u8], at: usize) -> Option<(SocketAddr, usize)> {
    let (ip, rest): (IpAddr, usize) = match body.get(at)? {
        4 => {
            let o: [u8; 4] = body.get(at + 1..at + 5)?.try_into().ok()?;
            (Ipv4Addr::from(o).into(), at + 5)
        }
        6 => {
            let o: [u8; 16] = body.get(at + 1..at + 17)?.try_into().ok()?;
            (Ipv6Addr::from(o).into(), at + 17)
        }
        _ => return None,
    };
    let port = u16::from_le_bytes(body.get(rest..rest + 2)?.try_into().ok()?);
    Some((SocketAddr::new(ip, port), rest + 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_families_round_trip() {
        for from in [
            SocketAddr::from(([10, 1, 2, 3], 9)),
            SocketAddr::from(([0xfe80, 0, 0, 0, 0, 0, 0, 1], 65_535)),
        ] {
            let mut out = vec![0xaa];
            encode(&mut out, from);
            assert_eq!(decode(&out, 1), Some((from, out.len())));
            assert_eq!(decode(&out[..out.len() - 1], 1), None, "cut short");
        }
        assert_eq!(decode(&[5, 0, 0, 0, 0, 0, 0], 0), None, "no family 5");
    }
}
