//go:build linux

package uffd

import (
	"path/filepath"
	"testing"
	"time"
)

// TestBatchRemoveInTheMiddle hands the session one batch as a single read(2)
// may return it: faults before and after a remove of their pages, the same
// page faulted twice, a fault outside every region. The remove must win
// wherever it sits in the batch, the duplicate must cost no second copy.
func TestBatchRemoveInTheMiddle(t *testing.T) {
	skipUnlessUFFD(t)
	const size = 4 * mib
	mf := makeMemFile(t, size)
	srv, err := Listen(Config{SocketPath: filepath.Join(t.TempDir(), "uffd.sock"), MemFile: mf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	g := startGuest(t)
	do(t, g, "%s", connectCmd(srv, size, 4096))
	deadline := time.Now().Add(10 * time.Second)
	conn, err := srv.accept(deadline)
	srv.closeListener()
	if err != nil {
		t.Fatal(err)
	}
	sess, err := srv.handshake(conn, deadline)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sess.close)

	base := sess.regions[0].BaseHostVirtAddr
	fault := func(off uint64) uffdMsg { return uffdMsg{Event: eventPagefault, Arg: [3]uint64{0, base + off}} }
	const page = 4096
	msgs := []uffdMsg{
		fault(1*page + 100), // removed by the next message: zeros
		{Event: eventRemove, Arg: [3]uint64{base, base + 3*page}},
		fault(8 * page), fault(8*page + 8), // one copy for both
		fault(2 * page),   // removed: zeros
		fault(9 * page),   // copied
		fault(2*page + 1), // not adjacent to its twin: served again (EEXIST)
	}
	f := sess.fs
	if err := sess.takeBatch(f, msgs); err != nil {
		t.Fatal(err)
	}
	if gone := sess.servePending(f); gone || len(f.pending) != 0 {
		t.Fatalf("servePending: gone %v, %d faults left", gone, len(f.pending))
	}
	want := Stats{Faults: 6, PagesCopied: 2, ZeroPages: 2, Removes: 1, RemovedBytes: 3 * page, AlreadyPresent: 1}
	if st := sess.stats(); st != want {
		t.Errorf("stats %+v, want %+v", st, want)
	}
	// Every page the batch named is present now: the guest reads them
	// without faulting (a missing one would hang the guest until do's
	// timeout).
	do(t, g, "zero %d %d", 1*page, 2*page)
	do(t, g, "check %d %d", 8*page, 2*page)
}

// TestServeYieldsEveryBatch serves with the scheduler yield forced on every
// wake-up of the fault loop: every page must still arrive intact.
func TestServeYieldsEveryBatch(t *testing.T) {
	skipUnlessUFFD(t)
	old := yieldInterval
	yieldInterval = 0
	defer func() { yieldInterval = old }()
	const size = 8 * mib
	s := startServer(t, Config{MemFile: makeMemFile(t, size)})
	g := startGuest(t)
	do(t, g, "%s", connectCmd(s.Server, size, 4096))
	do(t, g, "check 0 %d", size)
	do(t, g, "close")
	if err := s.wait(t); err != nil {
		t.Fatal(err)
	}
	if st := s.Stats(); st.Faults != size/4096 || st.PagesCopied != size/4096 {
		t.Errorf("stats %+v, want %d faults and copies", st, size/4096)
	}
	if y := s.sess.Load().fs.yields; y == 0 {
		t.Error("the fault loop never yielded to the scheduler")
	}
}

// TestRemoveAfterPrefetch: once the prefetch goroutine has finished (no
// Detach), the fault loop reads events without evMu; removes and the faults
// after them must still be served right.
func TestRemoveAfterPrefetch(t *testing.T) {
	skipUnlessUFFD(t)
	const size = 8 * mib
	s := startServer(t, Config{MemFile: makeMemFile(t, size), Prefetch: true})
	g := startGuest(t)
	do(t, g, "%s", connectCmd(s.Server, size, 4096))
	<-s.Ready()
	sess := s.sess.Load()
	waitFor(t, "prefetch goroutine to finish", func() bool { return s.Stats().PrefetchDone && !sess.prefetching.Load() })
	before := s.Stats()
	do(t, g, "check 0 %d", size)
	do(t, g, "dontneed %d %d", mib, 2*mib)
	do(t, g, "zero %d %d", mib, 2*mib)
	do(t, g, "write %d %d 3", 2*mib, 4*kib)
	do(t, g, "expect %d %d 3", 2*mib, 4*kib)
	do(t, g, "check %d %d", 3*mib, size-3*mib)
	waitFor(t, "zero pages", func() bool { return s.Stats().ZeroPages == before.ZeroPages+2*mib/4096 })
	if st := s.Stats(); st.Removes != 1 || st.Faults != before.Faults+2*mib/4096 || st.Errors != 0 {
		t.Errorf("stats %+v (before the remove %+v): want one remove and %d zero-page faults", st, before, 2*mib/4096)
	}
}
