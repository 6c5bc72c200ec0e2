//go:build linux

package uffd

import (
	"runtime"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// prefetchChunk is the largest single UFFDIO_COPY of the prefetch. It also
// bounds how long a fault may wait for the prefetch to release evMu.
var prefetchChunk uint64 = 128 << 10

// prefetch copies every page that is neither present, removed nor a hole,
// in chunks, then fills the holes with zero pages; with detach it then
// unregisters guest memory.
func (s *session) prefetch(detach bool) {
	start := time.Now()
	for _, holes := range []bool{false, true} {
		for _, r := range s.regions {
			if !s.prefetchRegion(r, holes) {
				return
			}
		}
	}
	d := time.Since(start)
	s.prefetchNanos.Store(int64(d))
	s.prefetchDone.Store(true)
	st := s.stats()
	gibps := float64(st.PrefetchedBytes) / (1 << 30) / d.Seconds()
	s.log.Info("uffd: prefetch done", "duration", d, "bytes", st.PrefetchedBytes, "gib_per_s", gibps)
	if detach {
		s.detach()
	}
}

// want reports whether page i of r still needs filling in this pass.
func want(r *region, i uint64, holes bool) bool {
	return !r.present.get(i) && !r.removed.get(i) && r.holes.get(i) == holes
}

// prefetchRegion fills the pages of r (the hole pages when holes is set).
// It returns false when it should stop: Serve is returning, the peer is gone
// or an unexpected error.
func (s *session) prefetchRegion(r *region, holes bool) bool {
	p := s.ps
	maxPages := max(prefetchChunk>>r.shift, 1)
	if holes && r.PageSize != pageSize4K {
		maxPages = 1 // zeros are copied one huge page at a time
	}
	for i := uint64(0); i < r.npages; {
		if s.stopping.Load() {
			return false
		}
		if !want(r, i, holes) {
			i++
			continue
		}
		n := uint64(1)
		for n < maxPages && i+n < r.npages && want(r, i+n, holes) {
			n++
		}
		// Faults first: let a waiting reader take evMu before us.
		for s.readerWaiting.Load() {
			runtime.Gosched()
		}
		s.evMu.Lock()
		// A remove read since the scan must not be overwritten.
		m := uint64(0)
		for m < n && !r.removed.get(i+m) {
			m++
		}
		if m == 0 {
			s.evMu.Unlock()
			i++
			continue
		}
		n = m
		dst := r.BaseHostVirtAddr + i<<r.shift
		var e syscall.Errno
		var done int64
		switch {
		case !holes:
			e = s.copyPages(&p.copy, dst, r.src+i<<r.shift, n<<r.shift)
			done = p.copy.Copy
		case r.PageSize == pageSize4K:
			e = s.zeropage(&p.zero, dst, n<<r.shift)
			done = p.zero.Zeropage
		default:
			e = s.copyPages(&p.copy, dst, uint64(uintptr(unsafe.Pointer(&s.zero[0]))), r.PageSize)
			done = p.copy.Copy
		}
		s.evMu.Unlock()
		if e == 0 {
			done = int64(n << r.shift)
		}
		if e == 0 || (e == unix.EAGAIN && done > 0) {
			k := uint64(done) >> r.shift
			r.present.setRange(i, k)
			if holes {
				s.zeroPages.Add(k)
			} else {
				s.pagesCopied.Add(k)
				s.prefetched.Add(uint64(done))
			}
			i += k
			continue
		}
		switch e {
		case unix.EEXIST:
			// The first page is already there (a fault beat us).
			r.present.set(i)
			s.alreadyPresent.Add(1)
			i++
		case unix.EAGAIN:
			// A remove is pending; the fault loop will read it.
			s.retries.Add(1)
			time.Sleep(50 * time.Microsecond)
		case unix.ENOMEM:
			s.retries.Add(1)
			time.Sleep(time.Millisecond)
		case unix.ESRCH:
			return false // the peer's address space is gone
		case unix.ENOENT, unix.EFAULT, unix.EINVAL:
			// The region is no longer mapped or registered (the peer is
			// unmapping its memory, typically on exit).
			s.log.Debug("uffd: prefetch: region no longer registered", "base", r.BaseHostVirtAddr, "err", e)
			return true
		default:
			s.errs.Add(1)
			s.log.Error("uffd: prefetch copy failed; stopping prefetch", "dst", dst, "len", n<<r.shift, "err", e)
			return false
		}
	}
	return true
}

// detach unregisters all guest memory once every page is present or
// removed, so the VM keeps running without this handler.
func (s *session) detach() {
	for _, r := range s.regions {
		var missing uint64
		for w := range r.present {
			missing += uint64(64 - bitsOnes(r.present[w].Load()|r.removed[w].Load()))
		}
		missing -= uint64(len(r.present))*64 - r.npages // bits past the end
		if missing > 0 {
			s.log.Warn("uffd: not detaching: pages still missing", "region_base", r.BaseHostVirtAddr, "missing", missing)
			return
		}
	}
	for _, r := range s.regions {
		if e := s.unregister(r.BaseHostVirtAddr, r.Size); e != 0 {
			s.log.Warn("uffd: detach: UFFDIO_UNREGISTER failed", "region_base", r.BaseHostVirtAddr, "size", r.Size, "err", e)
			return
		}
	}
	s.detached.Store(true)
	s.log.Info("uffd: detached: guest memory fully present and unregistered; the VM no longer needs this handler")
}
