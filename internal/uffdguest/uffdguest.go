//go:build linux

// Package uffdguest plays Firecracker's side of the userfaultfd (UFFD)
// snapshot-restore handshake, for tests and for the stand-in firecracker.
//
// Connect does what Firecracker does on PUT /snapshot/load with a Uffd memory
// backend (src/vmm/src/persist.rs, guest_memory_from_uffd):
//
//  1. mmap anonymous guest memory: MAP_PRIVATE|MAP_ANONYMOUS|MAP_NORESERVE,
//     plus MAP_HUGETLB|MAP_HUGE_2MB for 2 MiB pages;
//  2. create a userfaultfd with O_CLOEXEC|O_NONBLOCK through /dev/userfaultfd
//     (USERFAULTFD_IOC_NEW), falling back to the userfaultfd(2) syscall;
//  3. UFFDIO_API requesting UFFD_FEATURE_EVENT_REMOVE (the only feature
//     Firecracker requires);
//  4. UFFDIO_REGISTER every region in MISSING mode;
//  5. connect to the handler's unix stream socket and send one message: a
//     JSON array of regions with the userfaultfd attached as SCM_RIGHTS;
//  6. keep the connection and its own copy of the userfaultfd open until
//     Close (Firecracker deliberately leaks both).
//
// After Connect returns, every first touch of a page of Memory blocks until
// the handler serves it. Touch guest memory from a process other than the
// handler's: a faulting thread blocks in the kernel and, in a Go program, holds
// its P while it does.
package uffdguest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Page sizes Firecracker uses for guest memory.
const (
	PageSize4K = 4096
	PageSize2M = 2 << 20
)

// Kernel userfaultfd ABI (include/uapi/linux/userfaultfd.h).
const (
	uffdAPI               = 0xAA
	uffdioAPI             = 0xc018aa3f
	uffdioRegister        = 0xc020aa00
	userfaultfdIocNew     = 0xaa00
	uffdioRegisterMissing = 1

	// FeatureEventRemove is UFFD_FEATURE_EVENT_REMOVE: madvise(MADV_DONTNEED)
	// and friends on registered memory are reported to the handler.
	FeatureEventRemove = 0x8
	// FeatureEventUnmap is UFFD_FEATURE_EVENT_UNMAP.
	FeatureEventUnmap = 0x40
	// FeatureSigbus is UFFD_FEATURE_SIGBUS: faults raise SIGBUS instead of
	// waiting for the handler.
	FeatureSigbus = 0x80

	ioctlCopyBit = 1 << 3 // _UFFDIO_COPY in uffdio_register.ioctls
)

// Region is one guest memory region as Firecracker describes it in the
// handshake, in guest-physical order.
type Region struct {
	// BaseHostVirtAddr is the address of the region in the guest process.
	BaseHostVirtAddr uint64
	// Size is the region length in bytes.
	Size uint64
	// Offset is where the region's contents start in the memory file.
	Offset uint64
	// PageSize is the backing page size in bytes (4096 or 2 MiB).
	PageSize uint64
}

// WireFormat selects which page-size fields the handshake JSON carries.
type WireFormat int

const (
	// WireCurrent is Firecracker v1.12+: "page_size" plus the deprecated
	// "page_size_kib" (both in bytes).
	WireCurrent WireFormat = iota
	// WirePageSizeKiB is Firecracker v1.7 to v1.11: only "page_size_kib"
	// (in bytes, despite the name).
	WirePageSizeKiB
	// WireNoPageSize is Firecracker v1.1 to v1.6: no page size field.
	WireNoPageSize
)

type options struct {
	wire         WireFormat
	regionSizes  []int64
	features     uint64
	closeUffd    bool
	payload      []byte
	noFD         bool
	skipRegister bool
}

// Option changes what Connect does.
type Option func(*options)

// WithWireFormat selects the JSON fields sent for the page size.
func WithWireFormat(w WireFormat) Option { return func(o *options) { o.wire = w } }

// WithRegions splits guest memory into consecutive regions of these sizes
// (which must add up to memSize and be multiples of the page size). Each is
// registered and announced separately, as Firecracker does for x86 guests
// larger than ~3 GiB. The regions stay adjacent in the guest's address space.
func WithRegions(sizes ...int64) Option {
	return func(o *options) { o.regionSizes = append([]int64(nil), sizes...) }
}

// WithFeatures requests extra UFFD features on top of
// UFFD_FEATURE_EVENT_REMOVE (for example FeatureEventUnmap).
func WithFeatures(f uint64) Option { return func(o *options) { o.features |= f } }

// WithCloseUffdAfterSend closes the guest's own copy of the userfaultfd once
// it has been sent. Firecracker does not do this; with it, the kernel
// releases the userfaultfd when the handler exits, which wakes blocked faults
// and turns every later missing-page fault into an ordinary zero-fill fault.
func WithCloseUffdAfterSend() Option { return func(o *options) { o.closeUffd = true } }

// WithRawHandshake sends payload instead of the region JSON (for testing a
// handler's validation). The regions are still registered.
func WithRawHandshake(payload []byte) Option {
	return func(o *options) { o.payload = append([]byte(nil), payload...) }
}

// WithoutFD sends the handshake without the SCM_RIGHTS userfaultfd (for
// testing a handler's validation).
func WithoutFD() Option { return func(o *options) { o.noFD = true } }

// Guest is guest memory registered with a userfaultfd whose handler has been
// handed the descriptor.
type Guest struct {
	mem      []byte
	regions  []Region
	uffd     int
	conn     *net.UnixConn
	pageSize int
	features uint64

	closeOnce sync.Once
	closeErr  error
}

type wireRegion struct {
	BaseHostVirtAddr uint64  `json:"base_host_virt_addr"`
	Size             uint64  `json:"size"`
	Offset           uint64  `json:"offset"`
	PageSize         *uint64 `json:"page_size,omitempty"`
	PageSizeKiB      *uint64 `json:"page_size_kib,omitempty"`
}

// Connect maps memSize bytes of anonymous guest memory with pageSize pages,
// registers it with a new userfaultfd and hands the descriptor and the region
// list to the handler listening on socketPath. ctx bounds the connect.
func Connect(ctx context.Context, socketPath string, memSize int64, pageSize int, opts ...Option) (*Guest, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	if pageSize != PageSize4K && pageSize != PageSize2M {
		return nil, fmt.Errorf("uffdguest: pageSize %d: must be 4096 or 2097152", pageSize)
	}
	if memSize <= 0 || memSize%int64(pageSize) != 0 {
		return nil, fmt.Errorf("uffdguest: memSize %d: must be a positive multiple of the page size %d", memSize, pageSize)
	}
	sizes := o.regionSizes
	if len(sizes) == 0 {
		sizes = []int64{memSize}
	}
	var total int64
	for i, s := range sizes {
		if s <= 0 || s%int64(pageSize) != 0 {
			return nil, fmt.Errorf("uffdguest: region %d size %d: must be a positive multiple of the page size %d", i, s, pageSize)
		}
		total += s
	}
	if total != memSize {
		return nil, fmt.Errorf("uffdguest: region sizes add up to %d, want memSize %d", total, memSize)
	}

	flags := unix.MAP_PRIVATE | unix.MAP_ANONYMOUS | unix.MAP_NORESERVE
	if pageSize == PageSize2M {
		flags |= unix.MAP_HUGETLB | unix.MAP_HUGE_2MB
	}
	mem, err := unix.Mmap(-1, 0, int(memSize), unix.PROT_READ|unix.PROT_WRITE, flags)
	if err != nil {
		return nil, fmt.Errorf("uffdguest: mmap %d bytes of guest memory (page size %d): %w", memSize, pageSize, err)
	}
	g := &Guest{mem: mem, uffd: -1, pageSize: pageSize}
	ok := false
	defer func() {
		if !ok {
			g.Close()
		}
	}()

	g.uffd, err = NewUserfaultfd()
	if err != nil {
		return nil, err
	}
	g.features, err = apiHandshake(g.uffd, FeatureEventRemove|o.features)
	if err != nil {
		return nil, err
	}
	base := uint64(uintptr(unsafe.Pointer(&mem[0])))
	var off uint64
	for _, s := range sizes {
		r := Region{BaseHostVirtAddr: base + off, Size: uint64(s), Offset: off, PageSize: uint64(pageSize)}
		if err := register(g.uffd, r.BaseHostVirtAddr, r.Size); err != nil {
			return nil, err
		}
		g.regions = append(g.regions, r)
		off += uint64(s)
	}

	payload := o.payload
	if payload == nil {
		payload, err = g.handshakeJSON(o.wire)
		if err != nil {
			return nil, err
		}
	}

	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", socketPath)
	if err != nil {
		return nil, fmt.Errorf("uffdguest: connect to handler socket %s: %w", socketPath, err)
	}
	g.conn = c.(*net.UnixConn)
	var oob []byte
	if !o.noFD {
		oob = unix.UnixRights(g.uffd)
	}
	n, oobn, err := g.conn.WriteMsgUnix(payload, oob, nil)
	if err != nil {
		return nil, fmt.Errorf("uffdguest: send handshake to %s: %w", socketPath, err)
	}
	if n != len(payload) || oobn != len(oob) {
		return nil, fmt.Errorf("uffdguest: send handshake to %s: short write (%d of %d bytes, %d of %d control bytes)", socketPath, n, len(payload), oobn, len(oob))
	}
	if o.closeUffd {
		unix.Close(g.uffd)
		g.uffd = -1
	}
	ok = true
	return g, nil
}

func (g *Guest) handshakeJSON(w WireFormat) ([]byte, error) {
	out := make([]wireRegion, len(g.regions))
	for i, r := range g.regions {
		ps := r.PageSize
		out[i] = wireRegion{BaseHostVirtAddr: r.BaseHostVirtAddr, Size: r.Size, Offset: r.Offset}
		switch w {
		case WireCurrent:
			out[i].PageSize, out[i].PageSizeKiB = &ps, &ps
		case WirePageSizeKiB:
			out[i].PageSizeKiB = &ps
		case WireNoPageSize:
		default:
			return nil, fmt.Errorf("uffdguest: unknown wire format %d", w)
		}
	}
	return json.Marshal(out)
}

// NewUserfaultfd creates a userfaultfd the way Firecracker does: through
// /dev/userfaultfd (USERFAULTFD_IOC_NEW) when that device exists, else with
// the userfaultfd(2) syscall; flags O_CLOEXEC|O_NONBLOCK, kernel faults
// allowed (no UFFD_USER_MODE_ONLY). UFFDIO_API has not been called yet.
func NewUserfaultfd() (int, error) {
	const flags = unix.O_CLOEXEC | unix.O_NONBLOCK
	var devErr error
	dev, err := unix.Open("/dev/userfaultfd", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err == nil {
		fd, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(dev), userfaultfdIocNew, flags)
		unix.Close(dev)
		if errno == 0 {
			return int(fd), nil
		}
		devErr = fmt.Errorf("ioctl USERFAULTFD_IOC_NEW on /dev/userfaultfd: %w", errno)
	} else {
		devErr = fmt.Errorf("open /dev/userfaultfd: %w", err)
	}
	fd, _, errno := unix.Syscall(unix.SYS_USERFAULTFD, flags, 0, 0)
	if errno != 0 {
		return -1, fmt.Errorf("uffdguest: create userfaultfd: %v; userfaultfd(2): %w", devErr, errno)
	}
	return int(fd), nil
}

type uffdioAPIArg struct {
	API      uint64
	Features uint64
	Ioctls   uint64
}

func apiHandshake(fd int, features uint64) (uint64, error) {
	a := uffdioAPIArg{API: uffdAPI, Features: features}
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), uffdioAPI, uintptr(unsafe.Pointer(&a))); errno != 0 {
		return 0, fmt.Errorf("uffdguest: UFFDIO_API with features %#x: %w", features, errno)
	}
	if a.Features&features != features {
		return 0, fmt.Errorf("uffdguest: UFFDIO_API: kernel lacks features %#x", features&^a.Features)
	}
	return a.Features, nil
}

type uffdioRegisterArg struct {
	Start, Len uint64
	Mode       uint64
	Ioctls     uint64
}

func register(fd int, start, length uint64) error {
	r := uffdioRegisterArg{Start: start, Len: length, Mode: uffdioRegisterMissing}
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), uffdioRegister, uintptr(unsafe.Pointer(&r))); errno != 0 {
		return fmt.Errorf("uffdguest: UFFDIO_REGISTER [%#x, +%d) missing mode: %w", start, length, errno)
	}
	if r.Ioctls&ioctlCopyBit == 0 {
		return fmt.Errorf("uffdguest: UFFDIO_REGISTER [%#x, +%d): UFFDIO_COPY not available (ioctls %#x)", start, length, r.Ioctls)
	}
	return nil
}

// Memory returns guest memory in memory-file order: Memory()[off] holds the
// byte at offset off of the snapshot memory file. It is invalid after Close.
func (g *Guest) Memory() []byte { return g.mem }

// Regions returns the regions announced to the handler.
func (g *Guest) Regions() []Region { return append([]Region(nil), g.regions...) }

// PageSize returns the page size in bytes.
func (g *Guest) PageSize() int { return g.pageSize }

// Features returns the UFFD features the kernel granted.
func (g *Guest) Features() uint64 { return g.features }

// UFFD returns the guest's own copy of the userfaultfd, or -1 once closed.
func (g *Guest) UFFD() int { return g.uffd }

// Dontneed does madvise(MADV_DONTNEED) on [off, off+length) of Memory, as
// Firecracker's balloon does; the handler receives UFFD_EVENT_REMOVE and the
// range reads back as zeros. off and length must be page aligned.
func (g *Guest) Dontneed(off, length int64) error {
	if off < 0 || length <= 0 || off+length > int64(len(g.mem)) || off%int64(g.pageSize) != 0 || length%int64(g.pageSize) != 0 {
		return fmt.Errorf("uffdguest: dontneed [%d, +%d): must be page aligned (%d) and inside %d bytes of memory", off, length, g.pageSize, len(g.mem))
	}
	if err := unix.Madvise(g.mem[off:off+length], unix.MADV_DONTNEED); err != nil {
		return fmt.Errorf("uffdguest: madvise(MADV_DONTNEED) [%d, +%d): %w", off, length, err)
	}
	return nil
}

// Close unmaps guest memory and closes the connection and the userfaultfd.
// Close is idempotent.
func (g *Guest) Close() error {
	g.closeOnce.Do(func() {
		var errs []error
		if g.conn != nil {
			if err := g.conn.Close(); err != nil {
				errs = append(errs, err)
			}
		}
		if g.uffd >= 0 {
			if err := unix.Close(g.uffd); err != nil {
				errs = append(errs, fmt.Errorf("close userfaultfd: %w", err))
			}
			g.uffd = -1
		}
		if g.mem != nil {
			if err := unix.Munmap(g.mem); err != nil {
				errs = append(errs, fmt.Errorf("munmap guest memory: %w", err))
			}
			g.mem = nil
		}
		if len(errs) > 0 {
			g.closeErr = fmt.Errorf("uffdguest: close: %w", errors.Join(errs...))
		}
	})
	return g.closeErr
}
