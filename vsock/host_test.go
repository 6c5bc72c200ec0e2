package vsock_test

import (
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mvm-dev/microvm/vsock"
)

// TestListenHost plays Firecracker's part for a guest-initiated connection:
// it connects to <uds>_<port> and the listener gets the stream.
func TestListenHost(t *testing.T) {
	uds := filepath.Join(t.TempDir(), "v.sock")
	ln, err := vsock.ListenHost(uds, 52)
	if err != nil {
		t.Fatal(err)
	}
	if got := vsock.HostSocketPath(uds, 52); got != uds+"_52" {
		t.Fatalf("HostSocketPath = %q", got)
	}
	go func() {
		c, err := net.Dial("unix", uds+"_52")
		if err == nil {
			c.Write([]byte("from guest"))
			c.Close()
		}
	}()
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(c)
	c.Close()
	if string(b) != "from guest" {
		t.Fatalf("read %q", b)
	}
	if _, err := vsock.ListenHost(uds, 52); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("second listener on a live socket: %v", err)
	}
	ln.Close()
	if _, err := os.Stat(uds + "_52"); !os.IsNotExist(err) {
		t.Fatalf("Close left the socket: %v", err)
	}
	// A stale socket (its listener gone without removing it) is replaced.
	stale, err := net.Listen("unix", uds+"_53")
	if err != nil {
		t.Fatal(err)
	}
	stale.(*net.UnixListener).SetUnlinkOnClose(false)
	stale.Close()
	ln, err = vsock.ListenHost(uds, 53)
	if err != nil {
		t.Fatalf("over a stale socket: %v", err)
	}
	ln.Close()
	os.WriteFile(uds+"_54", nil, 0o600)
	if _, err := vsock.ListenHost(uds, 54); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("over a regular file: %v", err)
	}
}
