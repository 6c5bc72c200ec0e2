package agent_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mvm-dev/microvm/agent"
)

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// pipeClient serves s on one end of an in-process pipe and returns a
// Client on the other.
func pipeClient(t *testing.T, s *agent.Server) *agent.Client {
	t.Helper()
	a, b := net.Pipe()
	done := make(chan error, 1)
	go func() { done <- s.ServeConn(context.Background(), b) }()
	c := agent.NewClient(a)
	t.Cleanup(func() {
		c.Close()
		b.Close()
		<-done
	})
	return c
}

// unixClient serves s on a unix listener and returns a dialer of clients;
// at cleanup the server's context ends and Serve must return.
func unixClient(t *testing.T, s *agent.Server) func() *agent.Client {
	t.Helper()
	path := filepath.Join(t.TempDir(), "agent.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Serve did not return after its context ended")
		}
	})
	return func() *agent.Client {
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		cl := agent.NewClient(c)
		t.Cleanup(func() { cl.Close() })
		return cl
	}
}

func TestPingAndCounterSharedAcrossConnections(t *testing.T) {
	ctx := ctxT(t)
	s := agent.NewServer("v9.9.9")
	dial := unixClient(t, s)
	c1, c2 := dial(), dial()
	p, err := c1.Ping(ctx)
	if err != nil {
		t.Fatalf("Ping: %v", err)
	}
	if p.Version != "v9.9.9" || p.Protocol != agent.ProtocolVersion || p.UptimeNS <= 0 || p.PID != os.Getpid() {
		t.Errorf("Ping = %+v", p)
	}
	for i, c := range []*agent.Client{c1, c2, c1} {
		v, err := c.Counter(ctx)
		if err != nil {
			t.Fatalf("Counter: %v", err)
		}
		if v != uint64(i+1) {
			t.Errorf("counter #%d = %d, want %d", i+1, v, i+1)
		}
	}
}

func TestConcurrentClients(t *testing.T) {
	ctx := ctxT(t)
	s := agent.NewServer("v1")
	dial := unixClient(t, s)
	const n, each = 8, 25
	var wg sync.WaitGroup
	seen := make(chan uint64, n*each)
	for range n {
		c := dial()
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				v, err := c.Counter(ctx)
				if err != nil {
					t.Error(err)
					return
				}
				seen <- v
			}
		}()
	}
	wg.Wait()
	close(seen)
	got := map[uint64]bool{}
	for v := range seen {
		if got[v] {
			t.Errorf("counter value %d returned twice", v)
		}
		got[v] = true
	}
	for v := uint64(1); v <= n*each; v++ {
		if !got[v] {
			t.Errorf("counter value %d never returned", v)
		}
	}
}

// rawExchange writes lines to a server over a pipe and returns the lines it
// answers, until it closes or has answered want lines.
func rawExchange(t *testing.T, s *agent.Server, input string, want int) []string {
	t.Helper()
	a, b := net.Pipe()
	done := make(chan error, 1)
	go func() { done <- s.ServeConn(context.Background(), b); b.Close() }()
	go func() { io.WriteString(a, input) }()
	r := bufio.NewReader(a)
	var out []string
	for len(out) < want {
		a.SetReadDeadline(time.Now().Add(10 * time.Second))
		line, err := r.ReadString('\n')
		if err != nil {
			break
		}
		out = append(out, strings.TrimSuffix(line, "\n"))
	}
	a.Close()
	<-done
	return out
}

func TestHostileLines(t *testing.T) {
	s := agent.NewServer("v1")
	input := strings.Join([]string{
		"",                         // blank: ignored
		"[    1.234] kernel noise", // not JSON: ignored
		"{not json",
		`{"id":7}`,
		`{"id":8,"op":"` + strings.Repeat("x", 200) + `"}`,
		`{"id":9,"op":"mmds"}`,
		`{"id":10,"op":"dial","args":{"addr":"1.2.3.4:5","bogus":1}}`,
		`{"id":11,"op":"read","args":{"path":"/dev/null","bytes":0}}`,
		`{"id":12,"op":"read","args":{"path":"/dev/null","bytes":1,"offset":3}}`,
		`{"id":13,"op":"mmds","args":{"path":"nope"}}`,
		`{"id":14,"op":"mmds","args":{"path":"/x","version":"V3"}}`,
		`{"id":15,"op":"dial","args":{"addr":"nohostport"}}`,
		`{"id":16,"op":"dial","args":{"addr":"127.0.0.1:1","timeout_ms":-5}}`,
		`{"id":17,"op":"poweroff"}`,
		"{\"id\":18,\"op\":\"counter\"}\r", // CRLF line end
	}, "\n") + "\n"
	got := rawExchange(t, s, input, 13)
	want := []string{
		`{"id":0,"error":{"code":"bad_request"`,
		`{"id":7,"error":{"code":"bad_request","message":"op is required"}}`,
		`{"id":8,"error":{"code":"unknown_op"`,
		`{"id":9,"error":{"code":"bad_request","message":"mmds needs args"}}`,
		`{"id":10,"error":{"code":"bad_request","message":"dial args: json: unknown field \"bogus\""}}`,
		`{"id":11,"error":{"code":"bad_request"`,
		`{"id":12,"error":{"code":"bad_request"`,
		`{"id":13,"error":{"code":"bad_request"`,
		`{"id":14,"error":{"code":"bad_request"`,
		`{"id":15,"error":{"code":"bad_request"`,
		`{"id":16,"error":{"code":"bad_request"`,
		`{"id":17,"error":{"code":"unsupported"`,
		`{"id":18,"result":{"value":1}}`,
	}
	if len(got) != len(want) {
		t.Fatalf("got %d answers, want %d:\n%s", len(got), len(want), strings.Join(got, "\n"))
	}
	for i := range want {
		if !strings.HasPrefix(got[i], want[i]) {
			t.Errorf("answer %d = %s\nwant prefix %s", i, got[i], want[i])
		}
	}
}

func TestLineTooLongEndsConnection(t *testing.T) {
	s := agent.NewServer("v1")
	input := `{"id":1,"op":"` + strings.Repeat("a", agent.MaxLineBytes) + "\"}\n" + `{"id":2,"op":"counter"}` + "\n"
	got := rawExchange(t, s, input, 2)
	if len(got) != 1 || !strings.Contains(got[0], `"code":"bad_request"`) || !strings.Contains(got[0], "longer than") {
		t.Fatalf("answers = %q, want one bad_request about the length, then the end", got)
	}
}

func TestClientSkipsNoiseAndReportsErrors(t *testing.T) {
	ctx := ctxT(t)
	a, b := net.Pipe()
	defer a.Close()
	// A peer that echoes each request and prints console noise before
	// its answer.
	go func() {
		defer b.Close()
		r := bufio.NewReader(b)
		s := agent.NewServer("v1")
		for {
			line, err := r.ReadBytes('\n')
			if err != nil {
				return
			}
			resp, _ := s.Handle(ctx, line[:len(line)-1])
			b.Write(line) // a terminal's echo of the request
			fmt.Fprintf(b, "[    3.1] random: crng init done\r\n\n")
			if err := writeJSON(b, resp); err != nil {
				return
			}
		}
	}()
	c := agent.NewClient(a)
	for want := uint64(1); want <= 2; want++ {
		v, err := c.Counter(ctx)
		if err != nil || v != want {
			t.Fatalf("Counter = %d, %v; want %d", v, err, want)
		}
	}
	err := c.Call(ctx, "frobnicate", nil, nil)
	var ae *agent.Error
	if !errors.Is(err, agent.ErrUnknownOp) || !errors.As(err, &ae) || ae.Op != "frobnicate" {
		t.Fatalf("unknown op: %v", err)
	}
	if err := c.Poweroff(ctx); !errors.Is(err, agent.ErrUnsupported) {
		t.Fatalf("Poweroff without Shutdown = %v, want ErrUnsupported", err)
	}
}

func writeJSON(w io.Writer, resp agent.Response) error {
	b, err := json.Marshal(resp)
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

func TestClientContextBreaksClient(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	go io.Copy(io.Discard, b) // a peer that never answers
	c := agent.NewClient(a)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := c.Ping(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Ping = %v, want DeadlineExceeded", err)
	}
	if _, err := c.Ping(context.Background()); !errors.Is(err, agent.ErrBroken) {
		t.Fatalf("Ping after an interrupted call = %v, want ErrBroken", err)
	}
}

func TestClientPeerClosed(t *testing.T) {
	a, b := net.Pipe()
	go func() {
		bufio.NewReader(b).ReadString('\n')
		b.Close()
	}()
	c := agent.NewClient(a)
	defer c.Close()
	if _, err := c.Counter(ctxT(t)); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("Counter = %v, want ErrUnexpectedEOF", err)
	}
}

func TestPoweroffCallsShutdownAfterAnswer(t *testing.T) {
	ctx := ctxT(t)
	s := agent.NewServer("v1")
	called := make(chan struct{})
	s.Shutdown = func() { close(called) }
	c := pipeClient(t, s)
	if err := c.Poweroff(ctx); err != nil {
		t.Fatalf("Poweroff: %v", err)
	}
	select {
	case <-called:
	case <-time.After(10 * time.Second):
		t.Fatal("Shutdown was not called")
	}
}

// fakeMMDS emulates Firecracker's MMDS: V2 needs a token from PUT
// /latest/api/token; V1 accepts plain GETs.
func fakeMMDS(t *testing.T, v2only bool) string {
	t.Helper()
	const token = "tok-123"
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Method == http.MethodPut && r.URL.Path == "/latest/api/token":
			if r.Header.Get("X-metadata-token-ttl-seconds") == "" {
				http.Error(w, "no ttl", http.StatusBadRequest)
				return
			}
			io.WriteString(w, token)
		case r.Method == http.MethodGet:
			if r.Header.Get("X-metadata-token") != token && v2only {
				http.Error(w, "no token", http.StatusUnauthorized)
				return
			}
			if r.URL.Path != "/mvm/network" {
				http.NotFound(w, r)
				return
			}
			if r.Header.Get("Accept") == "application/json" {
				io.WriteString(w, `{"ip":"169.254.0.21"}`)
				return
			}
			io.WriteString(w, "ip")
		default:
			http.Error(w, "bad", http.StatusMethodNotAllowed)
		}
	}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

func TestMMDS(t *testing.T) {
	ctx := ctxT(t)
	c := pipeClient(t, agent.NewServer("v1"))
	v2 := fakeMMDS(t, true)
	r, err := c.MMDS(ctx, agent.MMDSArgs{Path: "/mvm/network", Addr: v2, JSON: true})
	if err != nil || r.Status != 200 || r.Body != `{"ip":"169.254.0.21"}` {
		t.Fatalf("MMDS V2 json = %+v, %v", r, err)
	}
	r, err = c.MMDS(ctx, agent.MMDSArgs{Path: "/mvm/network", Addr: v2, Version: "V2"})
	if err != nil || r.Body != "ip" {
		t.Fatalf("MMDS V2 text = %+v, %v", r, err)
	}
	r, err = c.MMDS(ctx, agent.MMDSArgs{Path: "/mvm/network", Addr: v2, Version: "V1"})
	if err != nil || r.Status != http.StatusUnauthorized {
		t.Fatalf("MMDS V1 against a V2-only service = %+v, %v; want status 401", r, err)
	}
	r, err = c.MMDS(ctx, agent.MMDSArgs{Path: "/missing", Addr: fakeMMDS(t, false), Version: "V1"})
	if err != nil || r.Status != http.StatusNotFound {
		t.Fatalf("MMDS missing path = %+v, %v; want 404", r, err)
	}
	// Nothing listens: a failed op, not a broken client.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := ln.Addr().String()
	ln.Close()
	if _, err := c.MMDS(ctx, agent.MMDSArgs{Path: "/x", Addr: dead}); err == nil || !strings.Contains(err.Error(), "mmds token") {
		t.Fatalf("MMDS to a closed port = %v, want a token error", err)
	}
	if _, err := c.Counter(ctx); err != nil {
		t.Fatalf("client unusable after a failed op: %v", err)
	}
}

func TestDial(t *testing.T) {
	ctx := ctxT(t)
	c := pipeClient(t, agent.NewServer("v1"))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				line, err := bufio.NewReader(conn).ReadString('\n')
				if err != nil {
					return
				}
				if line == "silent\n" {
					time.Sleep(2 * time.Second)
					return
				}
				io.WriteString(conn, "echo "+line)
			}()
		}
	}()
	r, err := c.Dial(ctx, agent.DialArgs{Addr: ln.Addr().String(), Send: "hi\n", Recv: true})
	if err != nil || !r.OK || r.Reply != "echo hi" || r.Local == "" || r.ElapsedNS <= 0 {
		t.Fatalf("Dial echo = %+v, %v", r, err)
	}
	r, err = c.Dial(ctx, agent.DialArgs{Addr: ln.Addr().String(), Send: "silent\n", Recv: true, TimeoutMS: 100})
	if err != nil || r.OK || !r.Timeout || r.Refused {
		t.Fatalf("Dial to a silent peer = %+v, %v; want a timeout", r, err)
	}
	closed, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := closed.Addr().String()
	closed.Close()
	r, err = c.Dial(ctx, agent.DialArgs{Addr: addr})
	if err != nil || r.OK || !r.Refused || r.Timeout || !strings.Contains(r.Err, "refused") {
		t.Fatalf("Dial to a closed port = %+v, %v; want refused", r, err)
	}
}

func TestRead(t *testing.T) {
	ctx := ctxT(t)
	c := pipeClient(t, agent.NewServer("v1"))
	// A file on the test's temporary directory (O_DIRECT where the file
	// system has it, buffered where not).
	path := filepath.Join(t.TempDir(), "disk")
	const size = 3<<20 + 4096
	if err := os.WriteFile(path, make([]byte, size), 0o644); err != nil {
		t.Fatal(err)
	}
	r, err := c.Read(ctx, agent.ReadArgs{Path: path, Bytes: 2 << 20})
	if err != nil || r.Bytes != 2<<20 || r.ElapsedNS <= 0 {
		t.Fatalf("Read 2 MiB = %+v, %v", r, err)
	}
	r, err = c.Read(ctx, agent.ReadArgs{Path: path, Bytes: 8 << 20, Offset: 1 << 20})
	if err != nil || r.Bytes != size-1<<20 {
		t.Fatalf("Read past the end = %+v, %v; want %d bytes", r, err, size-1<<20)
	}
	_, err = c.Read(ctx, agent.ReadArgs{Path: filepath.Join(t.TempDir(), "absent"), Bytes: 1})
	var ae *agent.Error
	if !errors.As(err, &ae) || ae.Code != agent.CodeFailed || !strings.Contains(ae.Message, "absent") {
		t.Fatalf("Read of a missing file = %v, want a failed error naming it", err)
	}
}
