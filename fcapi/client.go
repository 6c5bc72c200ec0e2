package fcapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"
)

// Default timeouts.
const (
	DefaultTimeout         = 5 * time.Second
	DefaultSnapshotTimeout = 2 * time.Minute
)

const (
	// maxResponseBytes bounds what is read of a success body (GET /mmds
	// can be as large as the --mmds-size-limit the caller chose).
	maxResponseBytes = 32 << 20
	// maxErrorBodyBytes bounds the raw error body kept in APIError.Body.
	maxErrorBodyBytes = 4 << 10
)

// Options configures a [Client]. The zero value and nil mean the defaults.
type Options struct {
	// Timeout bounds each call (dial, request, response) unless the
	// context ends earlier. Zero or negative means [DefaultTimeout] (5s).
	Timeout time.Duration
	// SnapshotTimeout replaces Timeout for PUT /snapshot/create and
	// PUT /snapshot/load, which copy or map guest memory. Zero or negative
	// means [DefaultSnapshotTimeout] (2m).
	SnapshotTimeout time.Duration
	// Version is the target Firecracker version: requests that use
	// anything newer fail with [ErrUnsupported] before being sent, and
	// snapshot load is written in that version's dialect. nil means the
	// newest API this package knows (1.17); see also [Client.SetVersion].
	Version *Version
}

// Client is a typed client of one Firecracker API socket. It keeps one
// connection open and reuses it (Firecracker serves requests one at a
// time and accepts at most 10 connections); concurrent calls queue. A Client is safe for
// concurrent use; create one per socket and reuse it.
type Client struct {
	socketPath      string
	timeout         time.Duration
	snapshotTimeout time.Duration
	transport       *http.Transport
	http            *http.Client

	mu      sync.RWMutex
	version *Version
}

// New returns a client for the Firecracker API socket at socketPath. It
// does not connect: the first call dials. opts may be nil.
func New(socketPath string, opts *Options) *Client {
	c := &Client{
		socketPath:      socketPath,
		timeout:         DefaultTimeout,
		snapshotTimeout: DefaultSnapshotTimeout,
	}
	if opts != nil {
		if opts.Timeout > 0 {
			c.timeout = opts.Timeout
		}
		if opts.SnapshotTimeout > 0 {
			c.snapshotTimeout = opts.SnapshotTimeout
		}
		if opts.Version != nil {
			v := *opts.Version
			c.version = &v
		}
	}
	dialer := &net.Dialer{}
	c.transport = &http.Transport{
		// The address is always "localhost:80"; dial the socket instead,
		// honouring the call's context.
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return dialer.DialContext(ctx, "unix", socketPath)
		},
		Proxy: nil,
		// One connection: Firecracker's API thread serves one request at
		// a time anyway (a second connection would only queue there), and
		// a single connection is always reused instead of racing a dial
		// against the return of the previous one to the idle pool.
		// Concurrent calls queue here, each bounded by its own deadline.
		MaxConnsPerHost:     1,
		MaxIdleConnsPerHost: 1,
		MaxIdleConns:        1,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
		ForceAttemptHTTP2:   false,
	}
	c.http = &http.Client{
		Transport: c.transport,
		// Firecracker never redirects; never follow one.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	return c
}

// SocketPath returns the API socket path the client dials.
func (c *Client) SocketPath() string { return c.socketPath }

// SetVersion sets the target Firecracker version, typically after probing
// GET /version with [Client.FirecrackerVersion].
func (c *Client) SetVersion(v Version) {
	c.mu.Lock()
	c.version = &v
	c.mu.Unlock()
}

// TargetVersion returns the target version and true, or false when the
// client targets the newest API.
func (c *Client) TargetVersion() (Version, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.version == nil {
		return Version{}, false
	}
	return *c.version, true
}

// Supports reports whether the target version has feature f (always true
// when targeting the newest API).
func (c *Client) Supports(f Feature) bool {
	v, ok := c.TargetVersion()
	return !ok || Supported(v, f)
}

// target returns a copy of the target version or nil for newest.
func (c *Client) target() *Version {
	v, ok := c.TargetVersion()
	if !ok {
		return nil
	}
	return &v
}

// Close closes idle connections. The client stays usable: a later call
// dials again. It always returns nil.
func (c *Client) Close() error {
	c.transport.CloseIdleConnections()
	return nil
}

// call describes one request.
type call struct {
	method   string
	path     string
	body     any    // marshalled to JSON; nil = no body
	rawBody  []byte // pre-encoded body, used instead of body when non-nil
	out      any    // decoded from a 200 body; nil = body discarded
	snapshot bool   // use the snapshot timeout
}

// MaxPayloadBytes is Firecracker's default limit on a request body
// (--http-api-max-payload-size, 51200 bytes): larger bodies, such as big
// MMDS data, are refused with status 400.
const MaxPayloadBytes = 51200

// do sends one request and decodes the answer.
func (c *Client) do(ctx context.Context, cl call) error {
	var body []byte
	switch {
	case cl.rawBody != nil:
		body = cl.rawBody
	case cl.body != nil:
		b, err := json.Marshal(cl.body)
		if err != nil {
			return fmt.Errorf("fcapi: %s %s: encode body: %w", cl.method, cl.path, err)
		}
		body = b
	}
	timeout := c.timeout
	if cl.snapshot {
		timeout = c.snapshotTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	var rd io.Reader
	if body != nil {
		// bytes.Reader: net/http sets Content-Length and never chunks.
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, cl.method, "http://localhost"+cl.path, rd)
	if err != nil {
		return fmt.Errorf("fcapi: %s %s: %w", cl.method, cl.path, err)
	}
	if body != nil {
		req.ContentLength = int64(len(body))
		req.Header.Set("Content-Type", "application/json")
		// Firecracker answers a body over its payload limit at once and
		// reads the rest of it as further requests, each answered: on a
		// kept connection those answers would reach net/http unasked
		// (logged to the process's standard logger). Such a request gets
		// a connection of its own.
		req.Close = len(body) > MaxPayloadBytes
	}
	req.Header.Set("Accept", "application/json")

	resp, err := c.http.Do(req)
	if err != nil {
		// Drop *url.Error (it repeats method and URL); keep the chain below
		// it so errors.Is finds syscall.ECONNREFUSED, syscall.ENOENT,
		// context.DeadlineExceeded and context.Canceled.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return fmt.Errorf("fcapi: %s %s: %w", cl.method, cl.path, err)
	}
	defer resp.Body.Close()

	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		raw, rerr := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes))
		apiErr := &APIError{Method: cl.method, Path: cl.path, StatusCode: resp.StatusCode}
		var fb faultBody
		if json.Unmarshal(raw, &fb) == nil && fb.FaultMessage != nil {
			apiErr.FaultMessage = *fb.FaultMessage
		} else {
			apiErr.Body = truncate(strings.TrimSpace(string(raw)), maxErrorBodyBytes)
		}
		if rerr != nil && apiErr.FaultMessage == "" && apiErr.Body == "" {
			return fmt.Errorf("%w (reading body: %v)", apiErr, rerr)
		}
		return apiErr
	}

	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes+1))
	if err != nil {
		return fmt.Errorf("fcapi: %s %s: read response: %w", cl.method, cl.path, err)
	}
	if len(raw) > maxResponseBytes {
		return fmt.Errorf("fcapi: %s %s: response larger than %d bytes", cl.method, cl.path, maxResponseBytes)
	}
	if cl.out == nil {
		return nil
	}
	if len(bytes.TrimSpace(raw)) == 0 {
		return fmt.Errorf("fcapi: %s %s: %d response has no body", cl.method, cl.path, resp.StatusCode)
	}
	if err := json.Unmarshal(raw, cl.out); err != nil {
		return fmt.Errorf("fcapi: %s %s: decode response: %w", cl.method, cl.path, err)
	}
	return nil
}

// truncate cuts s to at most n bytes, marking the cut.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "...(truncated)"
}
