// Package agent is the protocol of mvm-agent, the project's guest program
// (cmd/mvm-agent), with a host-side [Client] and the guest-side [Server].
//
// mvm-agent runs inside a microVM, as PID 1 of a minimal image or as a
// service under another init. It listens on vsock port [DefaultPort] and
// also reads requests from the serial console. The host reaches the vsock
// port through Firecracker's unix socket (package vsock, [vsock.Dial]) and
// wraps the connection in a Client; any other stream (the console of an
// emulator, a pipe in a test) works the same.
//
// # Wire protocol
//
// Newline-delimited JSON, one request per line, answered in order by one
// response per line:
//
//	→ {"id":1,"op":"counter"}
//	← {"id":1,"result":{"value":1}}
//	→ {"id":2,"op":"nope"}
//	← {"id":2,"error":{"code":"unknown_op","message":"unknown op \"nope\""}}
//
// A request has an "id" (echoed in the response), an "op" and, per op, an
// "args" object; a response has either a "result" object or an "error" with
// a machine-readable code ([CodeUnknownOp], [CodeBadRequest],
// [CodeFailed], [CodeUnsupported]) and a message. Unknown fields are
// ignored on both sides, so ops and fields are added without breaking older
// peers; [ProtocolVersion], reported by ping, changes only when an existing
// op changes meaning. Lines are at most [MaxLineBytes]. On a shared line
// (a serial console, where the kernel prints too) the client skips lines
// that do not start with '{'.
//
// Why a hand-rolled framing rather than an RPC or HTTP stack: the same
// protocol must run over the serial console, a byte stream without
// connections or flow control that the kernel writes to as well, where a
// line-oriented protocol is the only one that resynchronises by itself. The
// agent issue's streamed exec and file transfer will be served over vsock
// by an HTTP stack, started by a future op on its own port; this protocol
// stays the control and health channel.
//
// # Ops
//
//	ping      → PingResult: agent version, protocol version, uptime
//	counter   → CounterResult: the next value of an in-memory counter
//	            (1, 2, ...): a guest restored from a snapshot continues it,
//	            a rebooted guest starts again
//	mmds      MMDSArgs → MMDSResult: an HTTP GET of the metadata service
//	            (V1, or V2 with a session token)
//	dial      DialArgs → DialResult: a TCP connection from the guest,
//	            optionally sending a line and reading one back
//	read      ReadArgs → ReadResult: reads bytes of a file or block device
//	            (O_DIRECT on Linux) and times it
//	poweroff  → {}: answers, then shuts the guest down
//	            (Server.Shutdown)
//
// # Console markers
//
// When the agent is ready to serve it prints [ReadyMarker] followed by a
// space and its version on the console, and [ShutdownMarker] when it starts
// shutting the guest down.
package agent
