package vsock

import "strconv"

// Addr is a vsock address: a context id and a port.
type Addr struct {
	CID  uint32
	Port uint32
}

// Network returns "vsock".
func (a Addr) Network() string { return "vsock" }

// String returns "vsock:CID:PORT".
func (a Addr) String() string {
	return "vsock:" + strconv.FormatUint(uint64(a.CID), 10) + ":" + strconv.FormatUint(uint64(a.Port), 10)
}
