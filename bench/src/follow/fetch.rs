//! Fetching a download offer, a window of blocks at a time, as a follower whose reply did
//! not fit in a datagram must.

use std::io;
use std::time::Instant;

use bytes::Bytes;
use mboard_protocol::{Expect, Offer, Response, SessionRequest};
use tokio::net::UdpSocket;

use super::{FollowerTally, send};
use crate::datagram::GIVE_UP;
use crate::scenario::Load;

/// Blocks asked for at once, as the client library asks by default.
const WINDOW: u64 = 64;

/// The response `offer` holds, fetched in blocks and then closed; `None` if a block could
/// not be had within [`GIVE_UP`].
pub(super) async fn fetch(
    socket: &UdpSocket,
    buf: &mut [u8],
    load: &Load,
    offer: Offer,
    me: &mut FollowerTally,
) -> io::Result<Option<Bytes>> {
    let blocks = offer.blocks();
    let mut got: Vec<Option<Bytes>> = vec![None; usize::try_from(blocks).unwrap_or(0)];
    let (mut have, mut next) = (0, 0);
    let give_up = Instant::now() + GIVE_UP;
    while next < blocks.min(WINDOW) {
        ask(socket, offer, next).await?;
        next += 1;
    }
    while have < blocks {
        let n = match tokio::time::timeout(load.resend, socket.recv(buf)).await {
            Ok(Ok(n)) => n,
            Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                me.tally.timeouts += 1;
                if Instant::now() >= give_up {
                    me.tally
                        .fail(|| format!("download of {} bytes not had", offer.size));
                    return Ok(None);
                }
                ask_again(socket, offer, &got[..next as usize]).await?;
                continue;
            }
        };
        let Ok(Response::Data { sid, index, data }) =
            Response::parse(Bytes::copy_from_slice(&buf[..n]), Expect::Data)
        else {
            continue;
        };
        let Some(slot) = got.get_mut(index as usize).filter(|_| sid == offer.sid) else {
            continue;
        };
        if slot.is_none() {
            *slot = Some(data);
            have += 1;
            if next < blocks {
                ask(socket, offer, next).await?;
                next += 1;
            }
        }
    }
    // Closing is a courtesy: an unclosed download expires on its own.
    send(socket, &SessionRequest::Close(offer.sid).to_bytes()).await?;
    let mut body = Vec::with_capacity(usize::try_from(offer.size).unwrap_or(0));
    for block in got.into_iter().flatten() {
        body.extend_from_slice(&block);
    }
    Ok(Some(Bytes::from(body)))
}

/// Asks again for every block of `asked` (those sent for so far) not had.
async fn ask_again(socket: &UdpSocket, offer: Offer, asked: &[Option<Bytes>]) -> io::Result<()> {
    for (index, block) in (0..).zip(asked) {
        if block.is_none() {
            ask(socket, offer, index).await?;
        }
    }
    Ok(())
}

async fn ask(socket: &UdpSocket, offer: Offer, index: u64) -> io::Result<()> {
    let g = SessionRequest::Fetch {
        sid: offer.sid,
        index,
    }
    .to_bytes();
    send(socket, &g).await
}
