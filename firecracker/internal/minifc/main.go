// Command minifc is a minimal Firecracker API responder for the
// firecracker package's benchmarks: it binds --api-sock, answers GET / with
// its state, accepts every PUT and PATCH (tracking InstanceStart and
// PATCH /vm), and exits shortly after SendCtrlAltDel. It checks nothing, so
// benchmarks measure the runtime rather than the stand-in's spec
// validation, and it is small enough to run a thousand of.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"
)

func main() {
	sock, id := "", "anonymous-instance"
	for i := 1; i+1 < len(os.Args); i += 2 {
		switch os.Args[i] {
		case "--api-sock":
			sock = os.Args[i+1]
		case "--id":
			id = os.Args[i+1]
		}
	}
	ln, err := net.Listen("unix", sock)
	if err != nil {
		fmt.Fprintln(os.Stderr, "minifc:", err)
		os.Exit(1)
	}
	var mu sync.Mutex
	state := "Not started"
	http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		defer mu.Unlock()
		switch {
		case r.Method == http.MethodGet && r.URL.Path == "/":
			w.Header().Set("Content-Type", "application/json")
			json.NewEncoder(w).Encode(map[string]string{
				"app_name": "Firecracker", "id": id, "state": state, "vmm_version": "1.17.0-dev",
			})
			return
		case r.URL.Path == "/actions" && strings.Contains(string(body), "InstanceStart"):
			state = "Running"
			fmt.Println("minifc: guest booted")
		case r.URL.Path == "/actions" && strings.Contains(string(body), "SendCtrlAltDel"):
			go func() { time.Sleep(10 * time.Millisecond); os.Exit(0) }()
		case r.URL.Path == "/vm" && strings.Contains(string(body), "Paused"):
			state = "Paused"
		case r.URL.Path == "/vm" && strings.Contains(string(body), "Resumed"):
			state = "Running"
		}
		w.WriteHeader(http.StatusNoContent)
	}))
}
