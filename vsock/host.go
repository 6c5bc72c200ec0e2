package vsock

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"time"
)

// HostSocketPath is where Firecracker connects when a program in the guest
// connects to the host (CID 2) on port: "<uds>_<port>", uds being the
// VM's vsock socket.
func HostSocketPath(uds string, port uint32) string {
	return uds + "_" + strconv.FormatUint(uint64(port), 10)
}

// ListenHost listens for connections the guest behind the Firecracker
// vsock socket uds opens to host port: a unix listener on
// HostSocketPath(uds, port), whose connections are plain streams from the
// guest program. A socket left there by a listener that is gone is
// replaced; one that still accepts connections, or a file that is not a
// socket, is an error. Close removes the socket file. After a restore
// with a moved vsock socket (vsock_override), or for each clone, listen
// on the new uds.
func ListenHost(uds string, port uint32) (net.Listener, error) {
	path := HostSocketPath(uds, port)
	if st, err := os.Lstat(path); err == nil {
		if st.Mode().Type() != os.ModeSocket {
			return nil, fmt.Errorf("vsock: listen for guest connections to port %d: %s exists and is not a socket", port, path)
		}
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("vsock: listen for guest connections to port %d: %s is in use by another listener", port, path)
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("vsock: remove the stale socket %s: %w", path, err)
		}
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("vsock: listen for guest connections to port %d: %w", port, err)
	}
	return ln, nil
}
