// Package agent is the protocol of mvm-agent, the project's guest program
// (cmd/mvm-agent), with a host-side [Client] and the guest-side [Server].
// It is for programs that talk to mvm-agent themselves (the firecracker
// runtime's [microvm.GuestAgent] is one) and for guest programs that serve
// its protocol (cmd/mvm-agent is one); embedders of the runtime use
// [microvm.GuestAgent] instead.
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
// Why a hand-rolled framing for this one: the same protocol must run over
// the serial console, a byte stream without connections or flow control
// that the kernel writes to as well, where a line-oriented protocol is the
// only one that resynchronises by itself. It stays the control and health
// channel; the guest's real work goes through the HTTP API below.
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
// # HTTP API (vsock port HTTPPort, 1025)
//
// Exec, files, environment and secrets are served by [Service] (guest) and
// called by [Guest] (host; [DialGuest] dials through Firecracker's vsock
// socket, one connection per call in flight, idle ones kept for reuse):
//
//	GET  /v1/ping                  → HTTPPing (version, protocol, api, uptime, pid)
//	POST /v1/exec                  body: a JSON ExecSpec line, then stdin;
//	                               answer: 200 with frames, or an error
//	POST /v1/exec/{id}/signal?signal=N   to the command's process group
//	POST /v1/exec/{id}/resize?rows=R&cols=C   its terminal (tty only)
//	PUT  /v1/files?path=P[&mode=0644][&uid=U][&gid=G]   body: the content
//	GET  /v1/files?path=P          → the content (Content-Length, Mvm-File-Mode)
//	PUT  /v1/env                   {"KEY":"value"|null,...} for later execs
//	PUT  /v1/secrets/{name}        body: the value
//
// Errors are a JSON Error {"code","message"} with an HTTP status per code
// (bad_request 400, not_allowed 403, not_found 404, no_space 507,
// unsupported 501, failed 500); [APIError] maps them onto the microvm
// sentinels (ErrInvalidArgument, ErrPathNotAllowed, ErrCommandNotFound,
// ErrGuestFileNotFound, ErrNoSpace). The version is the first path segment:
// a later API adds /v2/ next to /v1/, and a new field or endpoint within v1
// is ignored by peers that do not know it.
//
// An exec's answer is a stream of frames, a type byte, a big-endian uint32
// length and that many bytes: 'o' stdout, 'e' stderr, 'x' the exit
// (ExecExit JSON: exit_code, signal, timed_out), always last. The request
// body and the answer flow at the same time (HTTP/1.1 full duplex): the
// command's stdin is the rest of the body, its end is stdin's end. Signals
// and resizes go as requests of their own, so they never wait behind stdin
// data that the command has not read. The command runs in its own process
// group (a session with a controlling terminal for tty), which a timeout
// kills; a client that goes away (the body or the answer fails, or the
// connection closes) kills it too. Output that processes left behind still
// write is read for 2 s after the command exits.
//
// Files are written atomically: a temporary file in the target's
// directory, preallocated when the size is known (a full disk is refused
// before the transfer), fsynced, chowned and chmodded, then renamed; any
// failure, a body cut short included, removes it. Paths must be absolute
// and clean, under Service.FileRoots (default /) once symbolic links are
// resolved, and not under /proc, /sys, /dev or the secrets directory.
// Secrets are files 0400 in a 0700 directory that must be on tmpfs
// (default /run/mvm/secrets, given to every exec as MVM_SECRETS_DIR);
// their values are never logged.
//
// Why HTTP/1.1 from the standard library: net/http is the best-kept HTTP
// stack Go has, already in every build of this project, with streaming
// bodies both ways, chunked transfer, flow control by the transport, and
// context cancellation; it needs no code generation and no dependency
// outside the project's short list (Connect RPC or gRPC would bring
// protobuf and their runtimes into a static guest binary). vsock
// connections cost one CONNECT line, so each call in flight has its own
// connection rather than being multiplexed as HTTP/2 would: no
// head-of-line blocking and no HTTP/2 flow-control windows to cap a bulk
// transfer. The only framing of our own is the exec answer's, which
// multiplexes stdout, stderr and the exit status onto one body, as
// Docker's attach stream does.
//
// Guest context ids need not be unique across the host (the host side of
// each VM is a unix socket of its own), so no CID allocator exists.
//
// # Console markers
//
// When the agent is ready to serve it prints [ReadyMarker] followed by a
// space and its version on the console, and [ShutdownMarker] when it starts
// shutting the guest down.
package agent
