//go:build !linux

package vsock

import (
	"errors"
	"net"
)

// Listen is supported on Linux only.
func Listen(port uint32) (net.Listener, error) {
	return nil, errors.New("vsock: Listen is supported on Linux only")
}
