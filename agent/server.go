package agent

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Server serves the protocol. Its zero value is not ready: use [NewServer].
// One Server serves any number of connections at once; they share its
// counter.
type Server struct {
	version string
	started time.Time
	counter atomic.Uint64

	// Shutdown, when set, is called (in a goroutine of its own) after the
	// answer to a poweroff request has been written. Without it poweroff
	// answers CodeUnsupported.
	Shutdown func()
	// Dialer makes the connections of dial and mmds; nil means a plain
	// net.Dialer.
	Dialer *net.Dialer
}

// NewServer returns a Server that reports version and counts its uptime
// from now.
func NewServer(version string) *Server {
	return &Server{version: version, started: time.Now()}
}

// Serve accepts connections on ln and serves each in a goroutine until ln
// fails (is closed) or ctx ends; it then closes ln and every connection it
// accepted, waits for their goroutines, and returns the accept error (nil
// after ctx ended).
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns = map[net.Conn]struct{}{}
	)
	defer wg.Wait()
	defer func() {
		mu.Lock()
		defer mu.Unlock()
		for c := range conns {
			c.Close()
		}
	}()
	for {
		c, err := ln.Accept()
		if err != nil {
			ln.Close()
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		mu.Lock()
		conns[c] = struct{}{}
		mu.Unlock()
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() {
				mu.Lock()
				delete(conns, c)
				mu.Unlock()
				c.Close()
			}()
			s.ServeConn(ctx, c)
		}()
	}
}

// ServeConn reads requests from rw, one per line, and writes one response
// line for each, in order, until rw reaches EOF or fails or ctx ends (it
// returns nil at EOF). A line longer than MaxLineBytes is answered with
// CodeBadRequest and ends the connection (the stream cannot be trusted to
// resynchronise). Blank lines and lines that do not start with '{' are
// ignored (echo and noise of a console line). ServeConn does not close rw.
func (s *Server) ServeConn(ctx context.Context, rw io.ReadWriter) error {
	r := bufio.NewReaderSize(rw, 64<<10)
	for {
		line, err := readLine(r)
		if errors.Is(err, errLineTooLong) {
			s.write(rw, Response{Error: &Error{Code: CodeBadRequest, Message: fmt.Sprintf("request longer than %d bytes", MaxLineBytes)}})
			return err
		}
		if len(line) > 0 && line[0] == '{' {
			resp, after := s.Handle(ctx, line)
			if werr := s.write(rw, resp); werr != nil {
				return werr
			}
			if after != nil {
				go after()
			}
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
}

var errLineTooLong = errors.New("agent: line too long")

// readLine returns the next line without its end (\n or \r\n), or what is
// left at EOF with io.EOF.
func readLine(r *bufio.Reader) ([]byte, error) {
	var line []byte
	for {
		chunk, err := r.ReadSlice('\n')
		line = append(line, chunk...)
		if len(line) > MaxLineBytes {
			return nil, errLineTooLong
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		line = bytes.TrimRight(line, "\r\n")
		return line, err
	}
}

func (s *Server) write(w io.Writer, resp Response) error {
	b, err := json.Marshal(resp)
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

// Handle answers one request line. The returned function, when not nil,
// must be called after the response is written (poweroff's shutdown).
func (s *Server) Handle(ctx context.Context, line []byte) (resp Response, after func()) {
	var req Request
	if err := json.Unmarshal(line, &req); err != nil {
		return Response{Error: &Error{Code: CodeBadRequest, Message: "not a request: " + err.Error()}}, nil
	}
	resp.ID = req.ID
	result, after, err := s.dispatch(ctx, req)
	if err != nil {
		var ae *Error
		if !errors.As(err, &ae) {
			ae = &Error{Code: CodeFailed, Message: err.Error()}
		}
		resp.Error = ae
		return resp, nil
	}
	b, err := json.Marshal(result)
	if err != nil {
		resp.Error = &Error{Code: CodeFailed, Message: err.Error()}
		return resp, nil
	}
	resp.Result = b
	return resp, after
}

func badRequest(format string, args ...any) error {
	return &Error{Code: CodeBadRequest, Message: fmt.Sprintf(format, args...)}
}

// decodeArgs decodes a request's args into v, refusing unknown fields.
func decodeArgs(req Request, v any) error {
	if len(req.Args) == 0 {
		return badRequest("%s needs args", req.Op)
	}
	d := json.NewDecoder(bytes.NewReader(req.Args))
	d.DisallowUnknownFields()
	if err := d.Decode(v); err != nil {
		return badRequest("%s args: %v", req.Op, err)
	}
	return nil
}

func (s *Server) dispatch(ctx context.Context, req Request) (any, func(), error) {
	switch req.Op {
	case OpPing:
		return PingResult{Version: s.version, Protocol: ProtocolVersion, UptimeNS: int64(time.Since(s.started)), PID: os.Getpid()}, nil, nil
	case OpCounter:
		return CounterResult{Value: s.counter.Add(1)}, nil, nil
	case OpMMDS:
		var a MMDSArgs
		if err := decodeArgs(req, &a); err != nil {
			return nil, nil, err
		}
		r, err := s.mmds(ctx, a)
		return r, nil, err
	case OpDial:
		var a DialArgs
		if err := decodeArgs(req, &a); err != nil {
			return nil, nil, err
		}
		r, err := s.dial(ctx, a)
		return r, nil, err
	case OpRead:
		var a ReadArgs
		if err := decodeArgs(req, &a); err != nil {
			return nil, nil, err
		}
		r, err := readTimed(a)
		return r, nil, err
	case OpPoweroff:
		if s.Shutdown == nil {
			return nil, nil, &Error{Code: CodeUnsupported, Message: "poweroff needs the agent to run as the guest's init"}
		}
		return struct{}{}, s.Shutdown, nil
	case "":
		return nil, nil, badRequest("op is required")
	default:
		return nil, nil, &Error{Code: CodeUnknownOp, Message: fmt.Sprintf("unknown op %q", truncate(req.Op, 64))}
	}
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}

func (s *Server) dialer() *net.Dialer {
	if s.Dialer != nil {
		return s.Dialer
	}
	return &net.Dialer{}
}

// millis returns ms milliseconds, or def when ms is 0; negative or huge
// values are refused.
func millis(field string, ms, def int) (time.Duration, error) {
	switch {
	case ms == 0:
		return time.Duration(def) * time.Millisecond, nil
	case ms < 0 || ms > 600_000:
		return 0, badRequest("%s must be between 1 and 600000 (got %d)", field, ms)
	}
	return time.Duration(ms) * time.Millisecond, nil
}

// maxMMDSBody bounds MMDSResult.Body.
const maxMMDSBody = 512 << 10

func (s *Server) mmds(ctx context.Context, a MMDSArgs) (MMDSResult, error) {
	if !strings.HasPrefix(a.Path, "/") || strings.ContainsAny(a.Path, " \r\n\x00") {
		return MMDSResult{}, badRequest("mmds path must start with '/' and have no spaces or control characters (got %q)", truncate(a.Path, 64))
	}
	version := a.Version
	if version == "" {
		version = "V2"
	}
	if version != "V1" && version != "V2" {
		return MMDSResult{}, badRequest(`mmds version must be "V1" or "V2" (got %q)`, truncate(a.Version, 16))
	}
	addr := a.Addr
	if addr == "" {
		addr = "169.254.169.254:80"
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return MMDSResult{}, badRequest("mmds addr must be host:port (got %q)", truncate(addr, 64))
	}
	timeout, err := millis("timeout_ms", a.TimeoutMS, 5000)
	if err != nil {
		return MMDSResult{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	client := &http.Client{Transport: &http.Transport{
		DialContext:       s.dialer().DialContext,
		Proxy:             nil,
		DisableKeepAlives: true,
	}}
	base := "http://" + addr
	var token string
	if version == "V2" {
		req, err := http.NewRequestWithContext(ctx, http.MethodPut, base+"/latest/api/token", nil)
		if err != nil {
			return MMDSResult{}, err
		}
		req.Header.Set("X-metadata-token-ttl-seconds", "60")
		resp, err := client.Do(req)
		if err != nil {
			return MMDSResult{}, fmt.Errorf("mmds token: %w", err)
		}
		b, err := io.ReadAll(io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
		if err != nil {
			return MMDSResult{}, fmt.Errorf("mmds token: %w", err)
		}
		if resp.StatusCode != http.StatusOK {
			return MMDSResult{}, fmt.Errorf("mmds token: status %d: %s", resp.StatusCode, truncate(string(b), 200))
		}
		token = strings.TrimSpace(string(b))
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+a.Path, nil)
	if err != nil {
		return MMDSResult{}, badRequest("mmds path: %v", err)
	}
	if token != "" {
		req.Header.Set("X-metadata-token", token)
	}
	if a.JSON {
		req.Header.Set("Accept", "application/json")
	}
	resp, err := client.Do(req)
	if err != nil {
		return MMDSResult{}, fmt.Errorf("mmds get: %w", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxMMDSBody))
	if err != nil {
		return MMDSResult{}, fmt.Errorf("mmds get: %w", err)
	}
	return MMDSResult{Status: resp.StatusCode, Body: string(b)}, nil
}

// maxReply bounds DialResult.Reply.
const maxReply = 64 << 10

func (s *Server) dial(ctx context.Context, a DialArgs) (DialResult, error) {
	if _, _, err := net.SplitHostPort(a.Addr); err != nil {
		return DialResult{}, badRequest("dial addr must be host:port (got %q)", truncate(a.Addr, 64))
	}
	timeout, err := millis("timeout_ms", a.TimeoutMS, 3000)
	if err != nil {
		return DialResult{}, err
	}
	start := time.Now()
	res := DialResult{}
	fail := func(err error) (DialResult, error) {
		res.OK = false
		res.Err = err.Error()
		var ne net.Error
		res.Timeout = errors.As(err, &ne) && ne.Timeout()
		res.Refused = errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET)
		res.ElapsedNS = int64(time.Since(start))
		return res, nil
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c, err := s.dialer().DialContext(ctx, "tcp", a.Addr)
	if err != nil {
		return fail(err)
	}
	defer c.Close()
	res.Local = c.LocalAddr().String()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	if a.Send != "" {
		if _, err := io.WriteString(c, a.Send); err != nil {
			return fail(err)
		}
	}
	if a.Recv {
		line, err := bufio.NewReader(io.LimitReader(c, maxReply)).ReadString('\n')
		if err != nil && !(errors.Is(err, io.EOF) && line != "") {
			return fail(err)
		}
		res.Reply = strings.TrimRight(line, "\r\n")
	}
	res.OK = true
	res.ElapsedNS = int64(time.Since(start))
	return res, nil
}

// checkRead checks read's arguments.
func checkRead(a ReadArgs) error {
	switch {
	case a.Path == "" || strings.ContainsRune(a.Path, 0):
		return badRequest("read path is required and must not contain NUL")
	case a.Bytes < 1 || a.Bytes > MaxReadBytes:
		return badRequest("read bytes must be between 1 and %d (got %d)", MaxReadBytes, a.Bytes)
	case a.Offset < 0 || a.Offset%4096 != 0:
		return badRequest("read offset must be a non-negative multiple of 4096 (got %d)", a.Offset)
	}
	return nil
}
