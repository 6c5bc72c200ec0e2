//go:build linux

package uffd

import (
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Kernel userfaultfd ABI (include/uapi/linux/userfaultfd.h); the ioctl
// numbers are the same on amd64 and arm64.
const (
	uffdioUnregister = 0x8010aa01
	uffdioWake       = 0x8010aa02
	uffdioCopy       = 0xc028aa03
	uffdioZeropage   = 0xc020aa04

	eventPagefault = 0x12
	eventFork      = 0x13
	eventRemap     = 0x14
	eventRemove    = 0x15
	eventUnmap     = 0x16

	msgSize = 32 // sizeof(struct uffd_msg)
)

// uffdMsg is struct uffd_msg. Arg holds the union: pagefault {flags,
// address, ptid}, remove/unmap {start, end}, remap {from, to, len},
// fork {ufd}.
type uffdMsg struct {
	Event uint8
	_     [7]uint8
	Arg   [3]uint64
}

type uffdioRange struct {
	Start, Len uint64
}

type uffdioCopyArg struct {
	Dst, Src, Len, Mode uint64
	Copy                int64
}

type uffdioZeropageArg struct {
	Range    uffdioRange
	Mode     uint64
	Zeropage int64
}

var _ [msgSize]byte = [unsafe.Sizeof(uffdMsg{})]byte{}
var _ [40]byte = [unsafe.Sizeof(uffdioCopyArg{})]byte{}
var _ [32]byte = [unsafe.Sizeof(uffdioZeropageArg{})]byte{}

// ioctl issues an ioctl whose argument is a pointer. Short calls (one
// 4 KiB page: the fault path) use RawSyscall, which skips the scheduler's
// system-call bookkeeping; long ones (huge pages, prefetch chunks,
// unregistering) go through Syscall so that the P is released while the
// kernel copies.
func ioctl(fd int, req uintptr, arg unsafe.Pointer, long bool) syscall.Errno {
	var e syscall.Errno
	if long {
		_, _, e = unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(arg))
	} else {
		_, _, e = unix.RawSyscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(arg))
	}
	return e
}

func (s *session) copyPages(a *uffdioCopyArg, dst, src, n uint64) syscall.Errno {
	a.Dst, a.Src, a.Len, a.Mode, a.Copy = dst, src, n, 0, 0
	return ioctl(s.uffd, uffdioCopy, unsafe.Pointer(a), n > pageSize4K)
}

func (s *session) zeropage(a *uffdioZeropageArg, dst, n uint64) syscall.Errno {
	a.Range.Start, a.Range.Len, a.Mode, a.Zeropage = dst, n, 0, 0
	return ioctl(s.uffd, uffdioZeropage, unsafe.Pointer(a), n > 64*pageSize4K)
}

func (s *session) wake(r *uffdioRange, dst, n uint64) syscall.Errno {
	r.Start, r.Len = dst, n
	return ioctl(s.uffd, uffdioWake, unsafe.Pointer(r), false)
}

func (s *session) unregister(dst, n uint64) syscall.Errno {
	r := uffdioRange{Start: dst, Len: n}
	return ioctl(s.uffd, uffdioUnregister, unsafe.Pointer(&r), true)
}
