package server

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/mvm-dev/microvm/internal/fcstandin"
)

// maxConnections is micro-http's connection limit.
const maxConnections = 10

// serverFullMessage is micro-http's reply to the 11th connection.
const serverFullMessage = "HTTP/1.1 503\r\nServer: Firecracker API\r\nConnection: close\r\nContent-Length: 40\r\n\r\n{ \"error\": \"Too many open connections\" }"

// limitListener refuses connections beyond maxConnections like micro-http.
type limitListener struct {
	net.Listener
	mu     sync.Mutex
	active int
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		l.mu.Lock()
		if l.active >= maxConnections {
			l.mu.Unlock()
			c.SetWriteDeadline(time.Now().Add(time.Second))
			io.WriteString(c, serverFullMessage)
			c.Close()
			continue
		}
		l.active++
		l.mu.Unlock()
		return &countedConn{Conn: c, l: l}, nil
	}
}

type countedConn struct {
	net.Conn
	l    *limitListener
	once sync.Once
}

func (c *countedConn) Close() error {
	c.once.Do(func() {
		c.l.mu.Lock()
		c.l.active--
		c.l.mu.Unlock()
	})
	return c.Conn.Close()
}

// apiHandler is the HTTP face of the stand-in: it applies micro-http's
// transport rules, then hands requests one at a time to the VMM.
type apiHandler struct {
	vm         *vmm
	maxPayload int64
	mu         sync.Mutex // requests are processed one at a time
}

// response is what the VMM answers to one request.
type response struct {
	status      int
	body        []byte
	deprecation bool
	after       func() // runs after the response is on the wire
}

func (h *apiHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Server", "Firecracker API")
	switch r.Method {
	case http.MethodGet, http.MethodPut, http.MethodPatch:
	case http.MethodDelete:
		if h.vm.api == fcstandin.APIv10 { // micro-http learnt DELETE after v1.0
			h.parseError(w, "Invalid HTTP Method: Unsupported HTTP method.")
			return
		}
	default:
		h.parseError(w, "Invalid HTTP Method: Unsupported HTTP method.")
		return
	}
	var body []byte
	if len(r.TransferEncoding) > 0 {
		// micro-http reads bodies only via Content-Length.
		if h.vm.api == fcstandin.APIv10 {
			h.parseError(w, "Invalid request.")
			return
		}
		io.Copy(io.Discard, io.LimitReader(r.Body, h.maxPayload+1))
	} else if r.ContentLength > 0 {
		if r.ContentLength > h.maxPayload {
			// Firecracker reads the rest of the body (as further requests);
			// answering before it is read could reset the connection under
			// a client that is still writing it.
			io.Copy(io.Discard, io.LimitReader(r.Body, min(r.ContentLength, 16<<20)))
			h.parseError(w, fmt.Sprintf("Request payload with size %d is larger than the limit of %d allowed by server.", r.ContentLength, h.maxPayload))
			return
		}
		var err error
		body, err = io.ReadAll(io.LimitReader(r.Body, r.ContentLength))
		if err != nil || int64(len(body)) != r.ContentLength {
			h.parseError(w, "Invalid request.")
			return
		}
	}
	path := r.URL.EscapedPath()
	if r.URL.RawQuery != "" {
		path += "?" + r.URL.RawQuery
	}

	h.mu.Lock()
	resp := h.vm.handle(r.Method, path, body)
	h.mu.Unlock()
	if d := h.vm.opts.AnswerDelay[r.Method+" "+path]; d > 0 {
		time.Sleep(d) // done, and not yet told (FCSTANDIN_ANSWER_DELAY)
	}

	if resp.deprecation {
		w.Header().Set("Deprecation", "true")
	}
	w.Header().Set("Connection", "keep-alive")
	if resp.status == http.StatusNoContent || len(resp.body) == 0 {
		w.WriteHeader(resp.status)
	} else {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Length", strconv.Itoa(len(resp.body)))
		w.WriteHeader(resp.status)
		w.Write(resp.body)
	}
	if resp.after != nil {
		if f, ok := w.(http.Flusher); ok {
			f.Flush()
		}
		resp.after()
	}
}

// parseError answers like micro-http does when it cannot parse a request:
// a 400 whose body is not the usual fault_message JSON, then the
// connection is dropped.
func (h *apiHandler) parseError(w http.ResponseWriter, msg string) {
	body := fmt.Sprintf("{ \"error\": \"%s\nAll previous unanswered requests will be dropped.\" }", msg)
	w.Header().Set("Connection", "close")
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusBadRequest)
	io.WriteString(w, body)
	h.vm.log(lvlError, "fc_api", "src/firecracker/src/api_server/mod.rs:1", "Received Error. Status code: 400 Bad Request. Message: "+msg)
}

// serve runs the API server on ln until it is closed.
func serveAPI(ln net.Listener, h *apiHandler) error {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: time.Minute, ErrorLog: nil}
	err := srv.Serve(&limitListener{Listener: ln})
	if errors.Is(err, http.ErrServerClosed) || errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}
