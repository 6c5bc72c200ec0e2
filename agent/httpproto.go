package agent

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
)

// HTTP API constants (see the package documentation, "HTTP API").
const (
	// HTTPPort is the vsock port of the HTTP API.
	HTTPPort = 1025
	// APIVersion is the version of the HTTP API: the first segment of
	// every path ("/v1/...") and what ping reports as "api".
	APIVersion = 1
	// ExecIDHeader carries the id of a started exec in the response.
	ExecIDHeader = "Mvm-Exec-Id"
	// ExecPIDHeader carries the guest pid of a started exec.
	ExecPIDHeader = "Mvm-Exec-Pid"
	// FileModeHeader carries a read file's permission bits (octal).
	FileModeHeader = "Mvm-File-Mode"
	// ExecContentType is the request body type of exec: a JSON ExecSpec,
	// then the command's standard input.
	ExecContentType = "application/x-mvm-exec"
	// FramesContentType is the response body type of exec: frames.
	FramesContentType = "application/x-mvm-frames"
)

// DefaultSecretsDir is where the agent keeps secrets in the guest.
const DefaultSecretsDir = "/run/mvm/secrets"

// DefaultPath is the PATH of commands when nothing else sets it.
const DefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// More error codes, used by the HTTP API (the HTTP status in brackets).
const (
	// CodeNotFound: a command, file or exec that does not exist [404].
	CodeNotFound = "not_found"
	// CodeNotAllowed: a path outside what the agent may read or write [403].
	CodeNotAllowed = "not_allowed"
	// CodeNoSpace: the guest file system is full [507].
	CodeNoSpace = "no_space"
)

// ExecSpec is the JSON head of an exec request body.
type ExecSpec struct {
	Args []string          `json:"args"`
	Env  map[string]string `json:"env,omitempty"`
	Dir  string            `json:"dir,omitempty"`
	User string            `json:"user,omitempty"`
	TTY  bool              `json:"tty,omitempty"`
	Rows uint16            `json:"rows,omitempty"`
	Cols uint16            `json:"cols,omitempty"`
	// TimeoutMS, when positive, kills the command's process group that
	// long after it started.
	TimeoutMS int64 `json:"timeout_ms,omitempty"`
	// Stdin tells whether the request body carries standard input after
	// the spec; without it the command's stdin is /dev/null.
	Stdin bool `json:"stdin,omitempty"`
}

// ExecExit is the payload of the exit frame.
type ExecExit struct {
	ExitCode int    `json:"exit_code"`
	Signal   string `json:"signal,omitempty"`
	TimedOut bool   `json:"timed_out,omitempty"`
	// Error is set when the agent could not wait for the command (it is
	// then killed).
	Error string `json:"error,omitempty"`
}

// HTTPPing is the answer of GET /v1/ping.
type HTTPPing struct {
	PingResult
	// API is the HTTP API version (APIVersion).
	API int `json:"api"`
}

// Frame types of an exec response body.
const (
	FrameStdout byte = 'o'
	FrameStderr byte = 'e'
	FrameExit   byte = 'x'
)

// maxFrame bounds one frame's payload.
const maxFrame = 1 << 20

// writeFrame writes one frame: a type byte, the payload's length as a
// big-endian uint32, the payload.
func writeFrame(w io.Writer, typ byte, p []byte) error {
	var h [5]byte
	h[0] = typ
	binary.BigEndian.PutUint32(h[1:], uint32(len(p)))
	if _, err := w.Write(h[:]); err != nil {
		return err
	}
	_, err := w.Write(p)
	return err
}

// readFrame reads one frame into buf (grown as needed).
func readFrame(r io.Reader, buf []byte) (byte, []byte, error) {
	var h [5]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return 0, nil, err
	}
	n := binary.BigEndian.Uint32(h[1:])
	if n > maxFrame {
		return 0, nil, fmt.Errorf("frame of %d bytes, more than %d", n, maxFrame)
	}
	if cap(buf) < int(n) {
		buf = make([]byte, n)
	}
	buf = buf[:n]
	if _, err := io.ReadFull(r, buf); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return 0, nil, err
	}
	return h[0], buf, nil
}

// httpStatus is the HTTP status of an error code.
func httpStatus(code string) int {
	switch code {
	case CodeBadRequest:
		return http.StatusBadRequest
	case CodeNotFound, CodeUnknownOp:
		return http.StatusNotFound
	case CodeNotAllowed:
		return http.StatusForbidden
	case CodeNoSpace:
		return http.StatusInsufficientStorage
	case CodeUnsupported:
		return http.StatusNotImplemented
	}
	return http.StatusInternalServerError
}

// writeError answers with an error body {"code","message"}.
func writeError(w http.ResponseWriter, e *Error) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(httpStatus(e.Code))
	json.NewEncoder(w).Encode(e)
}

func errorf(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}
