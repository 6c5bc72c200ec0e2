package fcapi

import (
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

// recorded is one request as the fake server saw it.
type recorded struct {
	Method           string
	Path             string
	Host             string
	Header           http.Header
	ContentLength    int64
	TransferEncoding []string
	Body             string
}

// reply is a canned answer.
type reply struct {
	status int
	body   string
}

// fakeServer is a stand-in Firecracker API on a unix socket that records
// every request. By default PUT/PATCH answer 204 and GETs answer from
// replies (400 with a fault_message when there is none).
type fakeServer struct {
	sock string
	ln   net.Listener
	srv  *http.Server
	done chan struct{} // closed on shutdown; releases hanging handlers

	mu       sync.Mutex
	reqs     []recorded
	replies  map[string]reply // "GET /path" -> reply
	handler  http.HandlerFunc // overrides the default when set
	newConns int
	open     int
	maxOpen  int
	record   bool
}

// shortTempDir returns a short temporary directory (unix socket paths are
// limited to 108 bytes; t.TempDir() can be longer).
func shortTempDir(tb testing.TB) string {
	tb.Helper()
	dir, err := os.MkdirTemp("", "fcapi")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func newFakeServer(tb testing.TB) *fakeServer {
	tb.Helper()
	fs := &fakeServer{
		sock:    filepath.Join(shortTempDir(tb), "api.sock"),
		done:    make(chan struct{}),
		replies: map[string]reply{},
		record:  true,
	}
	ln, err := net.Listen("unix", fs.sock)
	if err != nil {
		tb.Fatal(err)
	}
	fs.ln = ln
	fs.srv = &http.Server{
		Handler: http.HandlerFunc(fs.serve),
		ConnState: func(_ net.Conn, st http.ConnState) {
			fs.mu.Lock()
			defer fs.mu.Unlock()
			switch st {
			case http.StateNew:
				fs.newConns++
				fs.open++
				fs.maxOpen = max(fs.maxOpen, fs.open)
			case http.StateClosed, http.StateHijacked:
				fs.open--
			}
		},
	}
	go fs.srv.Serve(ln)
	tb.Cleanup(func() {
		close(fs.done)
		fs.srv.Close()
	})
	return fs
}

func (fs *fakeServer) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	fs.mu.Lock()
	if fs.record {
		fs.reqs = append(fs.reqs, recorded{
			Method:           r.Method,
			Path:             r.URL.Path,
			Host:             r.Host,
			Header:           r.Header.Clone(),
			ContentLength:    r.ContentLength,
			TransferEncoding: r.TransferEncoding,
			Body:             string(body),
		})
	}
	h := fs.handler
	rep, ok := fs.replies[r.Method+" "+r.URL.Path]
	fs.mu.Unlock()
	if h != nil {
		h(w, r)
		return
	}
	if ok {
		writeReply(w, rep)
		return
	}
	if r.Method == http.MethodGet {
		writeReply(w, reply{400, `{"fault_message":"no canned reply"}`})
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func writeReply(w http.ResponseWriter, rep reply) {
	if rep.body != "" {
		w.Header().Set("Content-Type", "application/json")
	}
	w.WriteHeader(rep.status)
	io.WriteString(w, rep.body)
}

func (fs *fakeServer) setReply(methodPath string, status int, body string) {
	fs.mu.Lock()
	fs.replies[methodPath] = reply{status, body}
	fs.mu.Unlock()
}

func (fs *fakeServer) setHandler(h http.HandlerFunc) {
	fs.mu.Lock()
	fs.handler = h
	fs.mu.Unlock()
}

func (fs *fakeServer) requests() []recorded {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	return append([]recorded(nil), fs.reqs...)
}

func (fs *fakeServer) reset() {
	fs.mu.Lock()
	fs.reqs = nil
	fs.mu.Unlock()
}

func (fs *fakeServer) connStats() (newConns, maxOpen int) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	return fs.newConns, fs.maxOpen
}

// client returns a client for the server, closed at cleanup.
func (fs *fakeServer) client(tb testing.TB, opts *Options) *Client {
	c := New(fs.sock, opts)
	tb.Cleanup(func() { c.Close() })
	return c
}
