"""A minimal hpfeeds subscriber for tests/e2e_hpfeeds.rs, on the protocol helpers of the
`hpfeeds` package (the broker's own): authenticate, subscribe to CHANNEL, publish a
marker (it comes back once the subscription is active), then append every payload
received as one line to OUT. Usage: hpfeeds_subscriber.py PORT CHANNEL OUT IDENT SECRET"""
import socket, sys, time
from hpfeeds.protocol import (OP_ERROR, OP_INFO, OP_PUBLISH, Unpacker, msgauth,
                              msgpublish, msgsubscribe, readinfo, readpublish)
port, chan, outpath = int(sys.argv[1]), sys.argv[2], sys.argv[3]
ident, secret = sys.argv[4], sys.argv[5]
for _ in range(200):
    try:
        s = socket.create_connection(('127.0.0.1', port), 3)
        break
    except OSError:
        time.sleep(0.1)
else:
    sys.exit('subscriber: no broker')
s.settimeout(None)
out = open(outpath, 'a')
u = Unpacker()
authed = False
while True:
    d = s.recv(65536)
    if not d:
        sys.exit('subscriber: broker closed the connection')
    u.feed(d)
    for op, body in u:
        if op == OP_INFO and not authed:
            _, nonce = readinfo(body)
            s.sendall(msgauth(nonce, ident, secret) + msgsubscribe(ident, chan)
                      + msgpublish(ident, chan, b'{"marker":"subscribed"}'))
            authed = True
        elif op == OP_PUBLISH:
            out.write(readpublish(body)[2].decode() + '\n')
            out.flush()
        elif op == OP_ERROR:
            out.write('ERROR %r\n' % body)
            out.flush()
