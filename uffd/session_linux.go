//go:build linux

package uffd

import (
	"fmt"
	"log/slog"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// maxBatch is how many uffd_msg one read(2) may return.
const maxBatch = 64

// yieldInterval bounds how long the fault loop goes without passing through
// the Go scheduler. A goroutine that only makes system calls never does; once
// it has done so for sysmon's preemption limit (10 ms), sysmon takes its P
// away while it sits in a system call and goes back to checking every 20 µs,
// and the loop wins a P back on its way out of the next call. Measured with
// BenchmarkFault before this yield: ≈ 3,000 sysmon wake-ups per 16,384
// faults and 20–50 % more CPU per fault than the C handler. A
// runtime.Gosched (a hand-off to another thread and back: tens of µs) every
// few milliseconds keeps the count from reaching the limit; 5 ms leaves room
// for a wake-up that comes late. A variable for tests.
var yieldInterval = 5 * time.Millisecond

// region is a validated Region with its page state.
type region struct {
	Region
	shift  uint
	npages uint64
	src    uint64 // address of the region's contents in the file mapping

	present bitmap       // filled by this handler (copy, zero page, EEXIST)
	removed bitmap       // removed by the guest (UFFD_EVENT_REMOVE/UNMAP): serve zeros
	holes   staticBitmap // entirely inside a hole of the memory file
}

func (r *region) contains(addr uint64) bool {
	return addr-r.BaseHostVirtAddr < r.Size
}

// faultState is owned by the fault loop; it is allocated apart from the
// shared counters so the two goroutines do not share its cache lines.
type faultState struct {
	msgs    [maxBatch]uffdMsg
	pending []uint64
	last    *region
	copy    uffdioCopyArg
	zero    uffdioZeropageArg
	wake    uffdioRange
	events  [4]unix.EpollEvent
	warned  bool
	// locked is whether the current batch was read under evMu (the
	// prefetch was running): only then are pages marked present.
	locked bool
	// [doneDst, doneDst+doneLen) is the page the last fault of the current
	// servePending pass filled (doneLen 0: none).
	doneDst, doneLen uint64
	yields           uint64 // runtime.Gosched calls (see yieldInterval)
}

// prefetchState is owned by the prefetch goroutine.
type prefetchState struct {
	copy uffdioCopyArg
	zero uffdioZeropageArg
}

// session is one accepted peer: its userfaultfd, regions and page state.
type session struct {
	log     *slog.Logger
	uffd    int
	conn    int
	pidfd   int
	peerPID int
	regions []*region
	zero    []byte // 2 MiB of zeros for hugetlb regions (no UFFDIO_ZEROPAGE there)

	// evMu serialises reading events from the userfaultfd with prefetch
	// copies: once read(2) returns a REMOVE event the guest's madvise
	// proceeds and zaps the range, so a prefetch copy decided before the
	// range was marked removed must not land after that.
	evMu          sync.Mutex
	readerWaiting atomic.Bool
	stopping      atomic.Bool
	// prefetching is set while the prefetch goroutine may still copy.
	// Once it is clear (after the goroutine's last copy) the fault loop
	// reads events without evMu and stops maintaining the present bitmap,
	// which only the prefetch and detach read.
	prefetching atomic.Bool

	faults, pagesCopied, zeroPages atomic.Uint64
	removes, removedBytes          atomic.Uint64
	alreadyPresent, retries, errs  atomic.Uint64
	prefetched                     atomic.Uint64
	prefetchNanos                  atomic.Int64
	prefetchDone, detached         atomic.Bool

	fs *faultState
	ps *prefetchState
}

func newSession(s *Server, uffd, conn, pid int, regs []Region) (*session, error) {
	sess := &session{log: s.log, uffd: uffd, conn: conn, pidfd: -1, peerPID: pid,
		fs: &faultState{pending: make([]uint64, 0, 4*maxBatch)}, ps: &prefetchState{}}
	holes, err := fileHoles(s.memfd, s.size)
	if err != nil {
		s.log.Warn("uffd: cannot find holes in the memory file; serving it all as data", "mem_file", s.cfg.MemFile, "err", err)
		holes = nil
	}
	base := uint64(uintptr(unsafe.Pointer(&s.mem[0])))
	huge := false
	for _, r := range regs {
		rr := &region{Region: r, src: base + r.Offset}
		for uint64(1)<<rr.shift < r.PageSize {
			rr.shift++
		}
		rr.npages = r.Size >> rr.shift
		rr.present, rr.removed = newBitmap(rr.npages), newBitmap(rr.npages)
		rr.holes = holePages(holes, r.Offset, r.Size, rr.shift)
		huge = huge || r.PageSize == pageSize2M
		sess.regions = append(sess.regions, rr)
	}
	if huge {
		sess.zero, err = unix.Mmap(-1, 0, pageSize2M, unix.PROT_READ, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
		if err != nil {
			return nil, fmt.Errorf("uffd: mmap zero buffer: %w", err)
		}
	}
	if fd, err := unix.PidfdOpen(pid, 0); err == nil {
		sess.pidfd = fd
	}
	return sess, nil
}

func (s *session) close() {
	for _, fd := range []*int{&s.uffd, &s.conn, &s.pidfd} {
		if *fd >= 0 {
			unix.Close(*fd)
			*fd = -1
		}
	}
	if s.zero != nil {
		unix.Munmap(s.zero)
		s.zero = nil
	}
}

func (s *session) stats() Stats {
	return Stats{
		Faults:           s.faults.Load(),
		PagesCopied:      s.pagesCopied.Load(),
		ZeroPages:        s.zeroPages.Load(),
		Removes:          s.removes.Load(),
		RemovedBytes:     s.removedBytes.Load(),
		AlreadyPresent:   s.alreadyPresent.Load(),
		Retries:          s.retries.Load(),
		Errors:           s.errs.Load(),
		PrefetchedBytes:  s.prefetched.Load(),
		PrefetchDone:     s.prefetchDone.Load(),
		PrefetchDuration: time.Duration(s.prefetchNanos.Load()),
		Detached:         s.detached.Load(),
	}
}

// run serves faults (and prefetches in the background) until the peer goes
// away, the server is woken or a fatal error.
func (s *session) run(prefetch, detach bool, wakefd int) error {
	var wg sync.WaitGroup
	if prefetch {
		s.prefetching.Store(true)
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer s.prefetching.Store(false)
			s.prefetch(detach)
		}()
	}
	err := s.faultLoop(wakefd)
	s.stopping.Store(true)
	wg.Wait()
	return err
}

type faultResult int

const (
	faultDone faultResult = iota
	faultRetry
	faultPeerGone
)

// Indexes of the descriptors the fault loop waits on (epoll user data).
const (
	evUffd = iota
	evConn
	evWake
	evPidfd
)

// faultLoop is the hot path: epoll_wait, read a batch of uffd_msg, resolve
// each fault with one ioctl. It runs on its own OS thread and does not
// allocate. epoll rather than poll: the set of descriptors is registered
// once, so each wait costs the same whatever their number.
//
// It waits in epoll_pwait rather than blocking in read(2): the userfaultfd
// is non-blocking, and O_NONBLOCK belongs to the open file description it
// shares with Firecracker; and a read blocked on the userfaultfd cannot be
// interrupted (Go's signal handlers restart it), so the loop could not
// notice the peer exiting or Close.
func (s *session) faultLoop(wakefd int) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	f := s.fs
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return fmt.Errorf("uffd: epoll_create1: %w", err)
	}
	defer unix.Close(epfd)
	for _, w := range []struct {
		fd, idx int
		events  uint32
	}{
		{s.uffd, evUffd, unix.EPOLLIN},
		{s.conn, evConn, unix.EPOLLRDHUP},
		{wakefd, evWake, unix.EPOLLIN},
		{s.pidfd, evPidfd, unix.EPOLLIN},
	} {
		if w.fd < 0 {
			continue
		}
		ev := unix.EpollEvent{Events: w.events, Fd: int32(w.idx)}
		if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, w.fd, &ev); err != nil {
			return fmt.Errorf("uffd: epoll_ctl: %w", err)
		}
	}
	lastYield := time.Now()
	for {
		if time.Since(lastYield) >= yieldInterval {
			runtime.Gosched()
			f.yields++
			lastYield = time.Now()
		}
		timeout := -1 // wait for ever
		if len(f.pending) > 0 {
			timeout = 1 // deferred faults: retry in 1 ms
		}
		n, _, e := unix.Syscall6(unix.SYS_EPOLL_PWAIT, uintptr(epfd), uintptr(unsafe.Pointer(&f.events[0])), uintptr(len(f.events)), uintptr(timeout), 0, 0)
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			return fmt.Errorf("uffd: epoll_pwait: %w", e)
		}
		readable := false
		for i := 0; i < int(n); i++ {
			ev := f.events[i].Events
			switch f.events[i].Fd {
			case evWake:
				return errWoken
			case evConn:
				if ev&(unix.EPOLLHUP|unix.EPOLLRDHUP|unix.EPOLLERR) != 0 {
					s.log.Info("uffd: peer hung up; stopping", "peer_pid", s.peerPID)
					return nil
				}
			case evPidfd:
				s.log.Info("uffd: peer exited; stopping", "peer_pid", s.peerPID)
				return nil
			case evUffd:
				if ev&unix.EPOLLERR != 0 {
					return fmt.Errorf("uffd: userfaultfd poll error (events %#x)", ev)
				}
				readable = true
			}
		}
		if readable {
			if _, err := s.readEvents(f); err != nil {
				return err
			}
		}
		if gone := s.servePending(f); gone {
			return nil
		}
	}
}

// servePending serves the queued faults, keeping those to retry. It
// reports whether the peer's address space is gone.
func (s *session) servePending(f *faultState) bool {
	if len(f.pending) == 0 {
		return false
	}
	keep := f.pending[:0]
	f.doneLen = 0
	for _, addr := range f.pending {
		if addr-f.doneDst < f.doneLen {
			// Another thread faulted on the page just filled: the fill
			// woke every thread waiting there, and no event read since
			// (none is read during a pass) can have removed it.
			s.faults.Add(1)
			continue
		}
		switch s.serveFault(f, addr) {
		case faultRetry:
			keep = append(keep, addr)
		case faultPeerGone:
			s.log.Info("uffd: peer address space gone; stopping", "peer_pid", s.peerPID)
			return true
		}
	}
	f.pending = keep
	return false
}

// readEvents drains the userfaultfd: layout events (remove, unmap) are
// applied at once, under evMu while the prefetch runs; page faults are
// queued in f.pending. It returns how many messages it read.
func (s *session) readEvents(f *faultState) (int, error) {
	total := 0
	for {
		f.locked = s.prefetching.Load()
		if f.locked {
			s.readerWaiting.Store(true)
			s.evMu.Lock()
			s.readerWaiting.Store(false)
		}
		n, _, e := unix.RawSyscall(unix.SYS_READ, uintptr(s.uffd), uintptr(unsafe.Pointer(&f.msgs[0])), maxBatch*msgSize)
		cnt := 0
		var err error
		if e == 0 {
			cnt = int(n) / msgSize
			err = s.takeBatch(f, f.msgs[:cnt])
		}
		if f.locked {
			s.evMu.Unlock()
		}
		switch e {
		case 0:
		case unix.EAGAIN:
			return total, nil
		case unix.EINTR:
			continue
		default:
			return total, fmt.Errorf("uffd: read userfaultfd: %w", e)
		}
		if err != nil {
			return total, err
		}
		total += cnt
		if cnt < maxBatch {
			return total, nil
		}
	}
}

// takeBatch applies the layout events of one read and queues its page
// faults in f.pending, to be served after every remove of the batch
// whatever the order of the messages.
func (s *session) takeBatch(f *faultState, msgs []uffdMsg) error {
	if err := s.applyLayoutEvents(msgs); err != nil {
		return err
	}
	for i := range msgs {
		if msgs[i].Event == eventPagefault {
			f.pending = append(f.pending, msgs[i].Arg[1])
		}
	}
	return nil
}

// applyLayoutEvents handles everything but page faults. Removes are applied
// before the batch's faults are served: a fault and a remove of the same
// range can arrive in either order, and the remove wins.
func (s *session) applyLayoutEvents(msgs []uffdMsg) error {
	for i := range msgs {
		m := &msgs[i]
		switch m.Event {
		case eventPagefault:
		case eventRemove, eventUnmap:
			s.markRemoved(m.Arg[0], m.Arg[1])
		case eventFork:
			// Only with UFFD_FEATURE_EVENT_FORK, which Firecracker does not
			// request: the child's memory is not ours to serve. Closing its
			// userfaultfd turns the child's faults into ordinary ones.
			unix.Close(int(uint32(m.Arg[0])))
			s.log.Warn("uffd: peer forked with registered memory; not serving the child")
		case eventRemap:
			return fmt.Errorf("uffd: guest memory [%#x, +%d) was moved to %#x (UFFD_EVENT_REMAP): not supported", m.Arg[0], m.Arg[2], m.Arg[1])
		default:
			s.log.Warn("uffd: ignoring unknown userfaultfd event", "event", m.Event)
		}
	}
	return nil
}

// markRemoved records that the guest dropped [start, end): later faults
// there get zero pages, and the prefetch skips it. Only pages entirely
// inside the range are affected (the kernel zaps no partial huge page).
func (s *session) markRemoved(start, end uint64) {
	s.removes.Add(1)
	if end > start {
		s.removedBytes.Add(end - start)
	}
	for _, r := range s.regions {
		lo, hi := max(start, r.BaseHostVirtAddr), min(end, r.BaseHostVirtAddr+r.Size)
		if lo >= hi {
			continue
		}
		ps := r.PageSize
		first := (lo - r.BaseHostVirtAddr + ps - 1) >> r.shift
		last := (hi - r.BaseHostVirtAddr) >> r.shift
		if first < last {
			r.removed.setRange(first, last-first)
		}
	}
}

func (s *session) findRegion(f *faultState, addr uint64) *region {
	if f.last != nil && f.last.contains(addr) {
		return f.last
	}
	for _, r := range s.regions {
		if r.contains(addr) {
			f.last = r
			return r
		}
	}
	return nil
}

// serveFault resolves one page fault at addr.
func (s *session) serveFault(f *faultState, addr uint64) faultResult {
	r := s.findRegion(f, addr)
	if r == nil {
		// Registered memory the handshake did not describe: a zero page
		// keeps the faulting thread from hanging for ever.
		if !f.warned {
			f.warned = true
			s.log.Warn("uffd: fault outside every region; serving zero pages there", "addr", fmt.Sprintf("%#x", addr))
		}
		dst := addr &^ (pageSize4K - 1)
		return s.faultOutcome(f, nil, 0, dst, pageSize4K, true, s.zeropage(&f.zero, dst, pageSize4K))
	}
	idx := (addr - r.BaseHostVirtAddr) >> r.shift
	dst := r.BaseHostVirtAddr + idx<<r.shift
	if r.removed.get(idx) || r.holes.get(idx) {
		return s.faultOutcome(f, r, idx, dst, r.PageSize, true, s.fillZero(&f.copy, &f.zero, r, dst))
	}
	e := s.copyPages(&f.copy, dst, r.src+idx<<r.shift, r.PageSize)
	return s.faultOutcome(f, r, idx, dst, r.PageSize, false, e)
}

func (s *session) faultOutcome(f *faultState, r *region, idx, dst, n uint64, zero bool, e syscall.Errno) faultResult {
	switch e {
	case 0:
		s.faults.Add(1)
		if zero {
			s.zeroPages.Add(1)
		} else {
			s.pagesCopied.Add(1)
		}
		if r != nil && f.locked {
			r.present.set(idx)
		}
		f.doneDst, f.doneLen = dst, n
		return faultDone
	case unix.EEXIST:
		// Already present (the prefetch got there first). Make sure the
		// faulting thread is awake.
		s.faults.Add(1)
		s.alreadyPresent.Add(1)
		if r != nil && f.locked {
			r.present.set(idx)
		}
		s.wake(&f.wake, dst, n)
		f.doneDst, f.doneLen = dst, n
		return faultDone
	case unix.EAGAIN, unix.ENOMEM:
		// EAGAIN: a remove is pending (mmap_changing); read it first.
		s.retries.Add(1)
		return faultRetry
	case unix.ESRCH:
		return faultPeerGone
	case unix.ENOENT, unix.EFAULT, unix.EINVAL:
		// The range is no longer mapped or registered (unmapped, or
		// detached): the kernel has woken the faulting thread.
		s.faults.Add(1)
		return faultDone
	default:
		s.errs.Add(1)
		s.log.Error("uffd: resolving fault failed; waking the thread to retry", "addr", fmt.Sprintf("%#x", dst), "err", e)
		s.wake(&f.wake, dst, n)
		return faultDone
	}
}

// fillZero fills one page of r at dst with zeros: UFFDIO_ZEROPAGE for 4 KiB
// pages, a copy of zeros for huge pages (hugetlbfs has no UFFDIO_ZEROPAGE).
func (s *session) fillZero(c *uffdioCopyArg, z *uffdioZeropageArg, r *region, dst uint64) syscall.Errno {
	if r.PageSize == pageSize4K {
		return s.zeropage(z, dst, pageSize4K)
	}
	return s.copyPages(c, dst, uint64(uintptr(unsafe.Pointer(&s.zero[0]))), r.PageSize)
}
