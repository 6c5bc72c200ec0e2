package microvm

import (
	"sync"
	"syscall"
)

// hostMemoryMiB returns the host's physical memory in MiB, or 0 when it is
// unknown.
var hostMemoryMiB = sync.OnceValue(func() int64 {
	var si syscall.Sysinfo_t
	if err := syscall.Sysinfo(&si); err != nil {
		return 0
	}
	return int64(si.Totalram) * int64(si.Unit) >> 20
})
