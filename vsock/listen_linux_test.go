package vsock_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mvm-dev/microvm/vsock"
)

// TestListenClose binds a vsock port (hosts without the vsock core module
// skip) and checks that Close ends a blocked Accept and frees the port.
// (A connection needs a transport: a guest's virtio device or the host's
// loopback module, neither of which test hosts are sure to have; the
// QEMU and KVM suites exercise the guest side.)
func TestListenClose(t *testing.T) {
	ln, err := vsock.Listen(40961)
	if errors.Is(err, unix.EAFNOSUPPORT) {
		t.Skip("no AF_VSOCK on this host")
	}
	if err != nil {
		t.Fatalf("Listen: %v", err)
	}
	if a, ok := ln.Addr().(vsock.Addr); !ok || a.Port != 40961 || a.CID != unix.VMADDR_CID_ANY || a.Network() != "vsock" {
		t.Errorf("Addr = %#v", ln.Addr())
	}
	done := make(chan error, 1)
	go func() {
		_, err := ln.Accept()
		done <- err
	}()
	time.Sleep(50 * time.Millisecond)
	if err := ln.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("Accept after Close returned a connection")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not end a blocked Accept")
	}
	ln2, err := vsock.Listen(40961)
	if err != nil {
		t.Fatalf("Listen again after Close: %v", err)
	}
	defer ln2.Close()
	if _, err := vsock.Listen(40961); !errors.Is(err, unix.EADDRINUSE) || !strings.Contains(err.Error(), "port 40961") {
		t.Errorf("second Listen on a bound port = %v, want EADDRINUSE naming the port", err)
	}
}
