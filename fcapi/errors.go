package fcapi

import (
	"errors"
	"fmt"
	"net/http"
)

// Sentinel errors. Test for them with [errors.Is].
var (
	// ErrUnsupported: the request uses an endpoint, a field or a value that
	// the target Firecracker version does not know. Returned before
	// anything is sent; the concrete error is an [*UnsupportedError].
	ErrUnsupported = errors.New("fcapi: not supported by the target firecracker version")

	// ErrInvalidArgument: a request body or argument breaks a rule of the
	// API (a required field is empty, a value is out of range, an id has a
	// character Firecracker refuses). Returned before anything is sent; the
	// concrete error is a [*FieldError] (or a parse error for versions).
	ErrInvalidArgument = errors.New("fcapi: invalid argument")
)

// APIError is a non-2xx answer from Firecracker. Firecracker answers 400
// for nearly everything (bad body, bad state, VMM error) and 413 when an
// MMDS body exceeds the data-store limit; the body is normally
// {"fault_message": "..."}.
type APIError struct {
	Method     string // HTTP method, e.g. "PUT"
	Path       string // request path, e.g. "/drives/rootfs"
	StatusCode int    // HTTP status code, e.g. 400
	// FaultMessage is the "fault_message" of the JSON error body; empty
	// when the body was not the usual JSON.
	FaultMessage string
	// Body is the raw response body (trimmed, at most 4 KiB) when it was
	// not the usual {"fault_message": ...} JSON; empty otherwise.
	Body string
}

// Error formats the error as
// "PUT /drives/rootfs: 400 Bad Request: <fault_message or body>".
func (e *APIError) Error() string {
	s := fmt.Sprintf("%s %s: %d %s", e.Method, e.Path, e.StatusCode, http.StatusText(e.StatusCode))
	switch {
	case e.FaultMessage != "":
		s += ": " + e.FaultMessage
	case e.Body != "":
		s += ": " + e.Body
	}
	return s
}

// UnsupportedError names the feature of a request that the target
// Firecracker version lacks and the first version that has it. It matches
// [ErrUnsupported].
type UnsupportedError struct {
	Op      string  // the request, e.g. "PUT /snapshot/load"
	Feature Feature // the field or value, e.g. "network_overrides"
	Min     Version // first Firecracker version that supports Feature
	Target  Version // the client's target version
}

// Error formats the error, e.g. "fcapi: PUT /snapshot/load:
// network_overrides needs firecracker >= 1.12 (target 1.10.1)".
func (e *UnsupportedError) Error() string {
	return fmt.Sprintf("fcapi: %s: %s needs firecracker >= %d.%d (target %s)",
		e.Op, e.Feature, e.Min.Major, e.Min.Minor, e.Target)
}

// Unwrap returns [ErrUnsupported].
func (e *UnsupportedError) Unwrap() error { return ErrUnsupported }

// FieldError is a request field that breaks an API rule, found before the
// request is sent. It matches [ErrInvalidArgument].
type FieldError struct {
	Op    string // the request, e.g. "PUT /drives/{drive_id}"
	Field string // the JSON field, e.g. "drive_id"
	Rule  string // what is wrong, e.g. "must be non-empty"
}

// Error formats the error, e.g. "fcapi: PUT /vsock: guest_cid: must be >= 3".
func (e *FieldError) Error() string {
	return fmt.Sprintf("fcapi: %s: %s: %s", e.Op, e.Field, e.Rule)
}

// Unwrap returns [ErrInvalidArgument].
func (e *FieldError) Unwrap() error { return ErrInvalidArgument }
