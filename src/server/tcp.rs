//! A dynamic TCP server: accepts on one listening socket and runs one task per
//! connection in the port's mode.

use super::accept::Acceptor;
use super::port_table::{PortTable, ServerHandle};
use crate::attack::Mode;
use crate::context::Context;
use crate::limit_warn;
use crate::proto::Protocol;
use crate::stats::Stats;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;

/// Accept on `listener` until the server is cancelled (run in the server's task).
pub async fn serve(table: Arc<PortTable>, mut listener: Acceptor, handle: ServerHandle) {
    loop {
        let accepted = tokio::select! {
            _ = handle.cancel.cancelled() => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, remote)) => {
                handle.touch();
                on_connection(table.context(), stream, remote, &handle.monitor);
            }
            Err(e) => {
                // Out of descriptors or memory: back off instead of spinning.
                let ctx = table.context();
                limit_warn!(ctx.throttle, "accept_error", error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// One accepted connection, attributed to `monitor`: policy lookup by the port it
/// was sent to (`local_addr`, which for a transparent socket is the original
/// destination), admission limits, then a session in the port's mode. Shared by the
/// dynamic servers and the `tproxy` monitor.
pub fn on_connection(
    ctx: &Arc<Context>,
    stream: TcpStream,
    remote: std::net::SocketAddr,
    monitor: &Arc<str>,
) {
    Stats::inc(&ctx.stats.connections);
    ctx.stats.connections_by_monitor.inc(&[monitor]);
    let Ok(local) = stream.local_addr() else {
        return;
    };
    let cfg = ctx.config();
    if cfg.policy.mode(Protocol::Tcp, local.port()) == Mode::Ignore {
        return;
    }
    let Some(permit) = super::admit(ctx, &cfg, Protocol::Tcp, local.port(), remote) else {
        return;
    };
    let _ = stream.set_nodelay(true);
    let spec = super::session_spec(ctx, &cfg, Protocol::Tcp, local.port(), monitor);
    let ctx2 = Arc::clone(ctx);
    ctx.sessions.spawn(async move {
        let captured = crate::mode::tcp(Arc::clone(&ctx2), stream, local, remote, spec).await;
        drop(permit);
        let t = &captured.transcript;
        (ctx2.stats).session_ended(captured.mode.as_str(), "tcp", t.bytes_in, t.bytes_out);
        ctx2.recorder.submit(captured);
    });
}
