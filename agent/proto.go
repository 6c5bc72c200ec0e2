package agent

import (
	"encoding/json"
	"errors"
	"fmt"
)

// Protocol constants.
const (
	// DefaultPort is the vsock port the agent listens on.
	DefaultPort = 1024
	// ProtocolVersion is the version of the protocol this package speaks.
	ProtocolVersion = 1
	// MaxLineBytes bounds one request or response line, newline included.
	MaxLineBytes = 1 << 20
	// ReadyMarker starts the console line the agent prints when it serves
	// requests: "mvm-agent: ready <version>".
	ReadyMarker = "mvm-agent: ready"
	// ShutdownMarker starts the console line the agent prints when it
	// begins shutting the guest down: "mvm-agent: shutting down (<why>)".
	ShutdownMarker = "mvm-agent: shutting down"
)

// The ops.
const (
	OpPing     = "ping"
	OpCounter  = "counter"
	OpMMDS     = "mmds"
	OpDial     = "dial"
	OpRead     = "read"
	OpPoweroff = "poweroff"
)

// Error codes of a response.
const (
	// CodeUnknownOp: the agent does not know the op (an older agent).
	CodeUnknownOp = "unknown_op"
	// CodeBadRequest: the line is not a request, or its args break a rule.
	CodeBadRequest = "bad_request"
	// CodeFailed: the op ran and failed (a file that cannot be read, an
	// HTTP error).
	CodeFailed = "failed"
	// CodeUnsupported: the op cannot run in this agent (poweroff when the
	// agent is not the guest's init).
	CodeUnsupported = "unsupported"
)

// Request is one request line.
type Request struct {
	// ID is echoed in the response; clients number their requests.
	ID uint64 `json:"id"`
	// Op names the operation.
	Op string `json:"op"`
	// Args holds the op's arguments, a JSON object (absent for ops
	// without arguments).
	Args json.RawMessage `json:"args,omitempty"`
}

// Response is one response line: Result on success, Error otherwise.
type Response struct {
	ID     uint64          `json:"id"`
	Result json.RawMessage `json:"result,omitempty"`
	Error  *Error          `json:"error,omitempty"`
}

// Error is a failed request, as the agent reported it. It matches
// [ErrUnknownOp] when its code is [CodeUnknownOp].
type Error struct {
	// Op is the request's op (filled in by the client).
	Op string `json:"-"`
	// Code is one of the Code constants.
	Code string `json:"code"`
	// Message says what went wrong.
	Message string `json:"message"`
}

// Error returns "agent: [<op>: ]<message> (<code>)".
func (e *Error) Error() string {
	if e.Op != "" {
		return fmt.Sprintf("agent: %s: %s (%s)", e.Op, e.Message, e.Code)
	}
	return fmt.Sprintf("agent: %s (%s)", e.Message, e.Code)
}

// Is reports whether target is the sentinel of e's code.
func (e *Error) Is(target error) bool {
	return target == ErrUnknownOp && e.Code == CodeUnknownOp ||
		target == ErrUnsupported && e.Code == CodeUnsupported
}

// Sentinels matched by an [*Error].
var (
	// ErrUnknownOp: the agent does not know the op.
	ErrUnknownOp = errors.New("agent: unknown op")
	// ErrUnsupported: the agent cannot run the op here.
	ErrUnsupported = errors.New("agent: op not supported here")
)

// PingResult answers ping.
type PingResult struct {
	// Version is the agent's version.
	Version string `json:"version"`
	// Protocol is the agent's ProtocolVersion.
	Protocol int `json:"protocol"`
	// UptimeNS is how long the agent has run, in nanoseconds.
	UptimeNS int64 `json:"uptime_ns"`
	// PID is the agent's process id (1 when it is the guest's init).
	PID int `json:"pid"`
}

// CounterResult answers counter.
type CounterResult struct {
	// Value is the counter after this request: 1 for the first request
	// since the agent started.
	Value uint64 `json:"value"`
}

// MMDSArgs are the arguments of mmds.
type MMDSArgs struct {
	// Path is the metadata path, starting with '/', e.g. "/mvm/network".
	Path string `json:"path"`
	// Version is "V1" (a plain GET) or "V2" (a PUT /latest/api/token
	// first, its token sent with the GET). Default "V2".
	Version string `json:"version,omitempty"`
	// Addr is the service's host:port. Default "169.254.169.254:80".
	Addr string `json:"addr,omitempty"`
	// JSON asks for the JSON form (Accept: application/json) instead of
	// the IMDS text form.
	JSON bool `json:"json,omitempty"`
	// TimeoutMS bounds the whole exchange; default 5000.
	TimeoutMS int `json:"timeout_ms,omitempty"`
}

// MMDSResult answers mmds.
type MMDSResult struct {
	// Status is the HTTP status of the GET.
	Status int `json:"status"`
	// Body is the response body (at most 512 KiB).
	Body string `json:"body"`
}

// DialArgs are the arguments of dial.
type DialArgs struct {
	// Addr is the destination "ip:port".
	Addr string `json:"addr"`
	// TimeoutMS bounds the connect, and the send and receive; default
	// 3000.
	TimeoutMS int `json:"timeout_ms,omitempty"`
	// Send, when not empty, is written after connecting.
	Send string `json:"send,omitempty"`
	// Recv reads one line (up to '\n' or EOF, at most 64 KiB) after
	// sending.
	Recv bool `json:"recv,omitempty"`
}

// DialResult answers dial. A connection that failed is a result, not an
// error: OK is false and Err says why.
type DialResult struct {
	// OK reports whether the connection (and the send and receive, when
	// asked) succeeded.
	OK bool `json:"ok"`
	// Err is the failure, e.g. "dial tcp 203.0.113.1:80: i/o timeout".
	Err string `json:"err,omitempty"`
	// Timeout reports that the failure was a timeout (what a dropping
	// firewall looks like); Refused that the peer refused (a reset).
	Timeout bool `json:"timeout,omitempty"`
	Refused bool `json:"refused,omitempty"`
	// Local is the guest's local address of the connection.
	Local string `json:"local,omitempty"`
	// Reply is the line read back, without its newline.
	Reply string `json:"reply,omitempty"`
	// ElapsedNS is how long the whole dial took.
	ElapsedNS int64 `json:"elapsed_ns"`
}

// ReadArgs are the arguments of read.
type ReadArgs struct {
	// Path is the file or block device, e.g. "/dev/vdb".
	Path string `json:"path"`
	// Bytes is how many bytes to read, 1 to MaxReadBytes; fewer are read
	// when the file ends first.
	Bytes int64 `json:"bytes"`
	// Offset is where to start, a multiple of 4096.
	Offset int64 `json:"offset,omitempty"`
}

// MaxReadBytes bounds ReadArgs.Bytes.
const MaxReadBytes = 1 << 30

// ReadResult answers read.
type ReadResult struct {
	// Bytes is how many bytes were read.
	Bytes int64 `json:"bytes"`
	// ElapsedNS is how long the reads took.
	ElapsedNS int64 `json:"elapsed_ns"`
	// Direct reports whether the page cache was bypassed (O_DIRECT).
	Direct bool `json:"direct"`
}
