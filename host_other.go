//go:build !linux

package microvm

// hostMemoryMiB is unknown off Linux; mvm runs VMs on Linux only.
func hostMemoryMiB() int64 { return 0 }
