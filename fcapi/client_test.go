package fcapi

import (
	"context"
	"errors"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// safety bounds a call that must end by itself; it is a hang guard, not a
// timing assertion.
const safety = 30 * time.Second

func runGuarded(t *testing.T, f func() error) error {
	t.Helper()
	ch := make(chan error, 1)
	go func() { ch <- f() }()
	select {
	case err := <-ch:
		return err
	case <-time.After(safety):
		t.Fatalf("call did not return within %v", safety)
		return nil
	}
}

func TestAPIErrorFaultMessage(t *testing.T) {
	fs := newFakeServer(t)
	c := fs.client(t, nil)
	fs.setHandler(func(w http.ResponseWriter, r *http.Request) {
		writeReply(w, reply{400, `{"fault_message":"The requested operation is not supported after starting the microVM."}`})
	})
	err := c.PutDrive(context.Background(), Drive{DriveID: "rootfs", PathOnHost: "/r", IsRootDevice: true})
	var ae *APIError
	if !errors.As(err, &ae) {
		t.Fatalf("error %v (%T) is not an *APIError", err, err)
	}
	want := APIError{Method: "PUT", Path: "/drives/rootfs", StatusCode: 400,
		FaultMessage: "The requested operation is not supported after starting the microVM."}
	if *ae != want {
		t.Errorf("APIError = %+v, want %+v", *ae, want)
	}
	if got, want := err.Error(), "PUT /drives/rootfs: 400 Bad Request: The requested operation is not supported after starting the microVM."; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
}

func TestAPIErrorStatusAndBodies(t *testing.T) {
	tests := []struct {
		name      string
		status    int
		body      string
		wantFault string
		wantBody  string
		wantMsg   string
	}{
		{"413 fault", 413, `{"fault_message":"The MMDS patch request doesn't fit."}`, "The MMDS patch request doesn't fit.", "",
			"PUT /mmds: 413 Request Entity Too Large: The MMDS patch request doesn't fit."},
		{"non-JSON body", 400, "Bad request: chunked encoding not supported\n", "", "Bad request: chunked encoding not supported",
			"PUT /mmds: 400 Bad Request: Bad request: chunked encoding not supported"},
		{"JSON without fault_message", 400, `{"error":"x"}`, "", `{"error":"x"}`,
			`PUT /mmds: 400 Bad Request: {"error":"x"}`},
		{"empty fault_message", 400, `{"fault_message":""}`, "", "", "PUT /mmds: 400 Bad Request"},
		{"no body", 500, "", "", "", "PUT /mmds: 500 Internal Server Error"},
		{"huge body truncated", 400, strings.Repeat("x", 10000), "", strings.Repeat("x", maxErrorBodyBytes) + "...(truncated)", ""},
	}
	fs := newFakeServer(t)
	c := fs.client(t, nil)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fs.setHandler(func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(tt.status)
				w.Write([]byte(tt.body))
			})
			err := c.PutMMDS(context.Background(), map[string]string{"a": "b"})
			var ae *APIError
			if !errors.As(err, &ae) {
				t.Fatalf("error %v (%T) is not an *APIError", err, err)
			}
			if ae.StatusCode != tt.status || ae.FaultMessage != tt.wantFault || ae.Body != tt.wantBody {
				t.Errorf("APIError = {%d %q %q}, want {%d %q %q}", ae.StatusCode, ae.FaultMessage, truncate(ae.Body, 60), tt.status, tt.wantFault, truncate(tt.wantBody, 60))
			}
			if tt.wantMsg != "" && err.Error() != tt.wantMsg {
				t.Errorf("Error() = %q, want %q", err.Error(), tt.wantMsg)
			}
		})
	}
}

func TestAnySuccessStatus(t *testing.T) {
	fs := newFakeServer(t)
	c := fs.client(t, nil)
	fs.setHandler(func(w http.ResponseWriter, r *http.Request) {
		writeReply(w, reply{200, `{"unexpected":"but fine"}`})
	})
	if err := c.InstanceStart(context.Background()); err != nil {
		t.Fatalf("200 with body on PUT: %v", err)
	}
}

func TestPerCallTimeout(t *testing.T) {
	fs := newFakeServer(t)
	fs.setHandler(func(w http.ResponseWriter, r *http.Request) {
		select { // hang until the client gives up or the test ends
		case <-r.Context().Done():
		case <-fs.done:
		}
	})
	c := fs.client(t, &Options{Timeout: 50 * time.Millisecond})
	err := runGuarded(t, func() error { return c.InstanceStart(context.Background()) })
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("error %v, want context.DeadlineExceeded", err)
	}
	if !strings.HasPrefix(err.Error(), "fcapi: PUT /actions: ") {
		t.Errorf("error %q does not name the request", err)
	}
	// The client stays usable after a timed-out call.
	fs.setHandler(nil)
	if err := c.InstanceStart(context.Background()); err != nil {
		t.Fatalf("call after timeout: %v", err)
	}
}

func TestContextDeadlineShorterThanTimeout(t *testing.T) {
	fs := newFakeServer(t)
	fs.setHandler(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-fs.done:
		}
	})
	c := fs.client(t, &Options{Timeout: time.Hour})
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	err := runGuarded(t, func() error { _, err := c.MachineConfig(ctx); return err })
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("error %v, want context.DeadlineExceeded", err)
	}
}

func TestSnapshotTimeout(t *testing.T) {
	fs := newFakeServer(t)
	fs.setHandler(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasPrefix(r.URL.Path, "/snapshot/") {
			select { // other calls hang until the client gives up
			case <-r.Context().Done():
			case <-fs.done:
			}
			return
		}
		select { // snapshot calls take longer than Timeout
		case <-time.After(100 * time.Millisecond):
		case <-r.Context().Done():
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	c := fs.client(t, &Options{Timeout: 20 * time.Millisecond, SnapshotTimeout: time.Hour})
	ctx := context.Background()
	if err := runGuarded(t, func() error { return c.PauseVM(ctx) }); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("PauseVM with a slow server: %v, want context.DeadlineExceeded", err)
	}
	if err := runGuarded(t, func() error {
		return c.CreateSnapshot(ctx, SnapshotCreateParams{MemFilePath: "/m", SnapshotPath: "/s"})
	}); err != nil {
		t.Fatalf("CreateSnapshot under SnapshotTimeout: %v", err)
	}
	if err := runGuarded(t, func() error {
		return c.LoadSnapshot(ctx, SnapshotLoadParams{SnapshotPath: "/s", MemFilePath: "/m"})
	}); err != nil {
		t.Fatalf("LoadSnapshot under SnapshotTimeout: %v", err)
	}
}

func TestContextCancel(t *testing.T) {
	fs := newFakeServer(t)
	arrived := make(chan struct{}, 1)
	fs.setHandler(func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		select {
		case <-r.Context().Done():
		case <-fs.done:
		}
	})
	c := fs.client(t, &Options{Timeout: time.Hour})
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		<-arrived
		cancel()
	}()
	err := runGuarded(t, func() error { return c.PauseVM(ctx) })
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("error %v, want context.Canceled", err)
	}

	// Already-cancelled context: nothing is sent.
	fs.setHandler(nil)
	fs.reset()
	if err := c.PauseVM(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled ctx: %v", err)
	}
	if n := len(fs.requests()); n != 0 {
		t.Errorf("server saw %d requests for a cancelled context", n)
	}
}

func TestConnectionRefused(t *testing.T) {
	sock := filepath.Join(shortTempDir(t), "dead.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close() // the socket file stays, nobody listens: ECONNREFUSED
	c := New(sock, nil)
	defer c.Close()
	err = c.InstanceStart(context.Background())
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("error %v, want ECONNREFUSED", err)
	}
	if errors.Is(err, syscall.ENOENT) {
		t.Errorf("refused error also matches ENOENT: %v", err)
	}
	var ae *APIError
	if errors.As(err, &ae) {
		t.Errorf("transport error is an *APIError: %v", err)
	}
	if !strings.Contains(err.Error(), "PUT /actions") {
		t.Errorf("error %q does not name the request", err)
	}
}

func TestSocketMissing(t *testing.T) {
	c := New(filepath.Join(shortTempDir(t), "missing.sock"), nil)
	defer c.Close()
	_, err := c.InstanceInfo(context.Background())
	if !errors.Is(err, syscall.ENOENT) {
		t.Fatalf("error %v, want ENOENT", err)
	}
	if errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("missing-socket error also matches ECONNREFUSED: %v", err)
	}
}

func TestKeepAliveReuse(t *testing.T) {
	fs := newFakeServer(t)
	c := fs.client(t, nil)
	fs.setReply("GET /machine-config", 200, `{"vcpu_count":1,"mem_size_mib":128}`)
	for i := 0; i < 20; i++ {
		if err := c.PutBootSource(context.Background(), BootSource{KernelImagePath: "/k"}); err != nil {
			t.Fatal(err)
		}
		if _, err := c.MachineConfig(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	if n, _ := fs.connStats(); n != 1 {
		t.Errorf("40 sequential calls opened %d connections, want 1", n)
	}
	// Close drops the idle connection; the client dials again afterwards.
	c.Close()
	if err := c.InstanceStart(context.Background()); err != nil {
		t.Fatalf("call after Close: %v", err)
	}
	if n, _ := fs.connStats(); n != 2 {
		t.Errorf("after Close: %d connections in total, want 2", n)
	}
}

func TestConcurrentCallsShareOneConnection(t *testing.T) {
	fs := newFakeServer(t)
	fs.setHandler(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(time.Millisecond) // keep requests overlapping
		w.WriteHeader(http.StatusNoContent)
	})
	c := fs.client(t, &Options{Timeout: time.Minute}) // calls queue: room for a loaded machine
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for i := 0; i < 64; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := c.PutVsock(context.Background(), Vsock{GuestCID: 3, UDSPath: "/v"}); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := len(fs.requests()); n != 64 {
		t.Errorf("server saw %d requests, want 64", n)
	}
	if n, maxOpen := fs.connStats(); n != 1 || maxOpen != 1 {
		t.Errorf("64 concurrent calls: %d connections opened, %d at once; want 1, 1", n, maxOpen)
	}
}

func TestAccessors(t *testing.T) {
	c := New("/run/x.sock", nil)
	defer c.Close()
	if c.SocketPath() != "/run/x.sock" {
		t.Errorf("SocketPath = %q", c.SocketPath())
	}
	if _, ok := c.TargetVersion(); ok {
		t.Error("new client without Options.Version has a target version")
	}
	if !c.Supports(FeatureSnapshotHugePages) {
		t.Error("newest target does not support huge_pages on load")
	}
	c.SetVersion(Version{Major: 1, Minor: 7})
	if v, ok := c.TargetVersion(); !ok || v != (Version{Major: 1, Minor: 7}) {
		t.Errorf("TargetVersion = %v, %v", v, ok)
	}
	if c.Supports(FeatureSnapshotNetworkOverrides) || !c.Supports(FeatureMachineHugePages) {
		t.Error("Supports disagrees with the matrix for 1.7")
	}
	// Options.Version is copied.
	v := Version{Major: 1, Minor: 4}
	c2 := New("/x", &Options{Version: &v})
	v.Minor = 99
	if got, _ := c2.TargetVersion(); got.Minor != 4 {
		t.Errorf("Options.Version aliased: %v", got)
	}
}
