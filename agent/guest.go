package agent

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
	"os"
	"strconv"
	"sync"
	"time"

	microvm "github.com/mvm-dev/microvm"
	"github.com/mvm-dev/microvm/vsock"
)

// Guest is the host-side client of the HTTP API of one guest's agent. It
// keeps idle connections for reuse (Close drops them) and is safe for
// concurrent use: each call in flight has a connection of its own.
type Guest struct {
	dial  func(ctx context.Context) (net.Conn, error)
	where string // "vsock port 1025 through /x/v.sock", for errors
	tr    *http.Transport
	hc    *http.Client

	mu      sync.Mutex
	dialErr error // the last dial's failure, nil after a success
}

// dialNote records the dial the transport made for one request.
type dialNote struct {
	mu      sync.Mutex
	started bool
	done    chan struct{}
	err     error
}

// NewGuest returns a client that reaches the agent through dial; where
// describes the way for error messages ("vsock port 1025 through ...").
func NewGuest(dial func(ctx context.Context) (net.Conn, error), where string) *Guest {
	g := &Guest{dial: dial, where: where}
	g.tr = &http.Transport{
		Proxy:               nil,
		DialContext:         g.dialContext,
		MaxIdleConnsPerHost: 16,
		IdleConnTimeout:     30 * time.Second,
		DisableCompression:  true,
		WriteBufferSize:     256 << 10,
		ReadBufferSize:      256 << 10,
	}
	g.hc = &http.Client{Transport: g.tr}
	return g
}

// DialGuest returns a client of the agent behind the Firecracker vsock
// socket uds, on port (0 means HTTPPort). Nothing is dialled until a call.
func DialGuest(uds string, port uint32) *Guest {
	if port == 0 {
		port = HTTPPort
	}
	return NewGuest(func(ctx context.Context) (net.Conn, error) {
		return vsock.Dial(ctx, uds, port)
	}, fmt.Sprintf("vsock port %d through %s", port, uds))
}

// Close drops the idle connections.
func (g *Guest) Close() error {
	g.tr.CloseIdleConnections()
	return nil
}

type reqCtxKey struct{}

type dialNoteKey struct{}

// dialContext dials for the transport. The transport detaches dials from
// the request's cancellation; the request's own context travels as a value
// so a dial that retries (vsock.Dial) still ends with the call.
func (g *Guest) dialContext(ctx context.Context, _, _ string) (net.Conn, error) {
	if rc, ok := ctx.Value(reqCtxKey{}).(context.Context); ok {
		var cancel context.CancelCauseFunc
		ctx, cancel = context.WithCancelCause(ctx)
		stop := context.AfterFunc(rc, func() { cancel(context.Cause(rc)) })
		defer stop()
		defer cancel(nil)
	}
	note, _ := ctx.Value(dialNoteKey{}).(*dialNote)
	if note != nil {
		note.mu.Lock()
		if note.started {
			note = nil // a second dial for the request: not noted
		} else {
			note.started = true
		}
		note.mu.Unlock()
	}
	c, err := g.dial(ctx)
	g.mu.Lock()
	g.dialErr = err
	g.mu.Unlock()
	if note != nil {
		note.err = err
		close(note.done)
	}
	return c, err
}

// do sends req; an error before any answer is told in terms of the agent.
func (g *Guest) do(ctx context.Context, req *http.Request) (*http.Response, error) {
	note := &dialNote{done: make(chan struct{})}
	req = req.WithContext(context.WithValue(context.WithValue(ctx, reqCtxKey{}, ctx), dialNoteKey{}, note))
	resp, err := g.hc.Do(req)
	if err != nil {
		return nil, g.transportErr(ctx, note, err)
	}
	return resp, nil
}

func (g *Guest) transportErr(ctx context.Context, note *dialNote, err error) error {
	note.mu.Lock()
	started := note.started
	note.mu.Unlock()
	var derr error
	if started {
		// The transport gives up on a request whose context ended before
		// the dial made for it did; that dial ends with the context too:
		// its verdict says whether an agent answered at all.
		<-note.done
		derr = note.err
	} else {
		g.mu.Lock()
		derr = g.dialErr
		g.mu.Unlock()
	}
	if derr != nil {
		return fmt.Errorf("%w: no agent answered on %s: %w", microvm.ErrAgentUnavailable, g.where, derr)
	}
	if ctx.Err() != nil {
		return fmt.Errorf("agent on %s: %w", g.where, context.Cause(ctx))
	}
	return fmt.Errorf("%w: agent on %s: %w", microvm.ErrConnectionLost, g.where, err)
}

func (g *Guest) newRequest(ctx context.Context, method, path string, q url.Values, body io.Reader) (*http.Request, error) {
	u := "http://agent" + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	return http.NewRequestWithContext(ctx, method, u, body)
}

// decodeError turns a non-2xx answer into an *APIError.
func decodeError(resp *http.Response) error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var e Error
	if json.Unmarshal(b, &e) != nil || e.Code == "" {
		return fmt.Errorf("agent: HTTP %d: %s", resp.StatusCode, truncate(string(bytes.TrimSpace(b)), 200))
	}
	return &APIError{Code: e.Code, Message: e.Message}
}

// APIError is an error the agent answered through the HTTP API. It matches
// the microvm sentinel of its code: ErrInvalidArgument (bad_request),
// ErrPathNotAllowed (not_allowed), ErrNoSpace (no_space), ErrUnsupported
// (unsupported, unknown_op), and for not_found ErrCommandNotFound (exec)
// or ErrGuestFileNotFound (the others).
type APIError struct {
	// Op is the call: "exec", "write file", "read file", "env", "secret".
	Op string
	// Code is one of the Code constants; Message says what went wrong.
	Code, Message string
}

// Error returns "agent: <op>: <message> (<code>)".
func (e *APIError) Error() string {
	return fmt.Sprintf("agent: %s: %s (%s)", e.Op, e.Message, e.Code)
}

// Unwrap returns the sentinel of the error's code.
func (e *APIError) Unwrap() error {
	switch e.Code {
	case CodeBadRequest:
		return microvm.ErrInvalidArgument
	case CodeNotAllowed:
		return microvm.ErrPathNotAllowed
	case CodeNoSpace:
		return microvm.ErrNoSpace
	case CodeUnsupported, CodeUnknownOp:
		return microvm.ErrUnsupported
	case CodeNotFound:
		if e.Op == "exec" {
			return microvm.ErrCommandNotFound
		}
		return microvm.ErrGuestFileNotFound
	}
	return nil
}

func (g *Guest) call(ctx context.Context, op, method, path string, q url.Values, body io.Reader, contentLength int64, out any) error {
	req, err := g.newRequest(ctx, method, path, q, body)
	if err != nil {
		return fmt.Errorf("agent: %s: %w", op, err)
	}
	if contentLength >= 0 && body != nil {
		req.ContentLength = contentLength
		if contentLength == 0 {
			req.Body = http.NoBody
		}
	}
	resp, err := g.do(ctx, req)
	if err != nil {
		return fmt.Errorf("agent: %s: %w", op, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return opErr(op, decodeError(resp))
	}
	if out != nil {
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
			return fmt.Errorf("agent: %s: decode answer: %w", op, err)
		}
	}
	return nil
}

func opErr(op string, err error) error {
	var ae *APIError
	if errors.As(err, &ae) {
		ae.Op = op
		return ae
	}
	return fmt.Errorf("agent: %s: %w", op, err)
}

// Ping returns the agent's version and uptime.
func (g *Guest) Ping(ctx context.Context) (microvm.AgentInfo, error) {
	var p HTTPPing
	if err := g.call(ctx, "ping", http.MethodGet, "/v1/ping", nil, nil, -1, &p); err != nil {
		return microvm.AgentInfo{}, err
	}
	return microvm.AgentInfo{Version: p.Version, Protocol: p.API, Uptime: time.Duration(p.UptimeNS)}, nil
}

// SetEnv sets variables for later execs.
func (g *Guest) SetEnv(ctx context.Context, env map[string]string) error {
	if err := microvm.ValidEnv(env); err != nil {
		return err
	}
	b, err := json.Marshal(env)
	if err != nil {
		return err
	}
	return g.call(ctx, "env", http.MethodPut, "/v1/env", nil, bytes.NewReader(b), int64(len(b)), nil)
}

// SetSecret stores a secret in the guest's secrets directory.
func (g *Guest) SetSecret(ctx context.Context, name string, value []byte) error {
	if err := microvm.ValidSecretName(name); err != nil {
		return err
	}
	if len(value) > microvm.MaxSecretBytes {
		return fmt.Errorf("%w: secret %s: value longer than %d bytes", microvm.ErrInvalidArgument, name, microvm.MaxSecretBytes)
	}
	return g.call(ctx, "secret", http.MethodPut, "/v1/secrets/"+name, nil, bytes.NewReader(value), int64(len(value)), nil)
}

// WriteFile writes r to path in the guest atomically.
func (g *Guest) WriteFile(ctx context.Context, path string, r io.Reader, opts *microvm.WriteFileOptions) error {
	q := url.Values{"path": {path}}
	size := int64(-1)
	if opts != nil {
		if opts.Mode&^(os.ModePerm|os.ModeSetuid|os.ModeSetgid|os.ModeSticky) != 0 {
			return fmt.Errorf("%w: write file %s: mode %v has bits other than permissions", microvm.ErrInvalidArgument, path, opts.Mode)
		}
		if opts.Mode != 0 {
			q.Set("mode", strconv.FormatUint(uint64(unixMode(opts.Mode)), 8))
		}
		if opts.UID != nil {
			if *opts.UID < 0 {
				return fmt.Errorf("%w: write file %s: uid must not be negative", microvm.ErrInvalidArgument, path)
			}
			q.Set("uid", strconv.Itoa(*opts.UID))
		}
		if opts.GID != nil {
			if *opts.GID < 0 {
				return fmt.Errorf("%w: write file %s: gid must not be negative", microvm.ErrInvalidArgument, path)
			}
			q.Set("gid", strconv.Itoa(*opts.GID))
		}
		if opts.Size > 0 {
			size = opts.Size
		}
	}
	if r == nil {
		r = bytes.NewReader(nil)
		size = 0
	}
	body := r
	if size > 0 {
		body = io.LimitReader(r, size)
	}
	return g.call(ctx, "write file", http.MethodPut, "/v1/files", q, io.NopCloser(body), size, nil)
}

// unixMode maps an os.FileMode to unix permission bits.
func unixMode(m os.FileMode) uint32 {
	u := uint32(m.Perm())
	if m&os.ModeSetuid != 0 {
		u |= 0o4000
	}
	if m&os.ModeSetgid != 0 {
		u |= 0o2000
	}
	if m&os.ModeSticky != 0 {
		u |= 0o1000
	}
	return u
}

// fileMode maps unix permission bits to an os.FileMode.
func fileMode(u uint32) os.FileMode {
	m := os.FileMode(u & 0o777)
	if u&0o4000 != 0 {
		m |= os.ModeSetuid
	}
	if u&0o2000 != 0 {
		m |= os.ModeSetgid
	}
	if u&0o1000 != 0 {
		m |= os.ModeSticky
	}
	return m
}

// ReadFile streams the guest file at path to w.
func (g *Guest) ReadFile(ctx context.Context, path string, w io.Writer) (microvm.FileInfo, error) {
	req, err := g.newRequest(ctx, http.MethodGet, "/v1/files", url.Values{"path": {path}}, nil)
	if err != nil {
		return microvm.FileInfo{}, err
	}
	resp, err := g.do(ctx, req)
	if err != nil {
		return microvm.FileInfo{}, fmt.Errorf("agent: read file %s: %w", path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return microvm.FileInfo{}, opErr("read file", decodeError(resp))
	}
	mode, _ := strconv.ParseUint(resp.Header.Get(FileModeHeader), 8, 32)
	fi := microvm.FileInfo{Size: resp.ContentLength, Mode: fileMode(uint32(mode))}
	n, err := io.CopyBuffer(w, resp.Body, make([]byte, 1<<20))
	if err != nil {
		if ctx.Err() != nil {
			return fi, fmt.Errorf("agent: read file %s: after %d bytes: %w", path, n, context.Cause(ctx))
		}
		return fi, fmt.Errorf("agent: read file %s: after %d of %d bytes: %w: %w", path, n, fi.Size, microvm.ErrConnectionLost, err)
	}
	return fi, nil
}
