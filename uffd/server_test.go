//go:build linux

package uffd

import (
	"bufio"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mvm-dev/microvm/internal/uffdguest"
)

func TestServeEveryPage(t *testing.T) {
	skipUnlessUFFD(t)
	const size = 32 * mib
	for _, wire := range []string{"current", "kib", "none"} {
		t.Run(wire, func(t *testing.T) {
			s := startServer(t, Config{MemFile: makeMemFile(t, size)})
			g := startGuest(t)
			do(t, g, "%s", connectCmd(s.Server, size, 4096, "wire="+wire))
			<-s.Ready()
			if s.PeerPID() != g.Pid() {
				t.Errorf("PeerPID() = %d, want guest pid %d", s.PeerPID(), g.Pid())
			}
			if r := s.Regions(); len(r) != 1 || r[0].Size != size || r[0].PageSize != 4096 {
				t.Errorf("Regions() = %+v", r)
			}
			do(t, g, "check 0 %d", size)
			// The guest may run before the handler counts its last fault.
			waitFor(t, "fault count", func() bool { return s.Stats().Faults == size/4096 })
			st := s.Stats()
			if st.PagesCopied != size/4096 || st.ZeroPages != 0 {
				t.Errorf("stats %+v, want %d faults and copies", st, size/4096)
			}
			if _, err := os.Stat(s.cfg.SocketPath); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("socket still exists after accept: %v", err)
			}
			g.Wait(10 * time.Second)
			if err := s.wait(t); err != nil {
				t.Errorf("Serve after the peer exited = %v, want nil", err)
			}
		})
	}
}

func TestServeMultipleRegions(t *testing.T) {
	skipUnlessUFFD(t)
	const size = 16 * mib
	s := startServer(t, Config{MemFile: makeMemFile(t, size+4*mib)})
	g := startGuest(t)
	do(t, g, "%s", connectCmd(s.Server, size, 4096, "regions=4194304,8388608,4194304"))
	<-s.Ready()
	if len(s.Regions()) != 3 {
		t.Fatalf("Regions() = %+v", s.Regions())
	}
	// Touch backwards to defeat the region cache.
	for off := int64(size - mib); off >= 0; off -= mib {
		do(t, g, "check %d %d", off, mib)
	}
	waitFor(t, "fault count", func() bool { return s.Stats().Faults == size/4096 })
}

func TestServeHoles(t *testing.T) {
	skipUnlessUFFD(t)
	const size = 16 * mib
	holes := []extent{{0, 64 * kib}, {3 * mib, 5 * mib}, {8*mib + 4*kib, 8*mib + 12*kib}, {15 * mib, size}}
	mf := makeMemFile(t, size, holes...)
	var holeBytes int64
	for _, h := range holes {
		holeBytes += h.end - h.start
	}
	s := startServer(t, Config{MemFile: mf})
	g := startGuest(t)
	do(t, g, "%s", connectCmd(s.Server, size, 4096))
	do(t, g, "check 0 %d", size)
	do(t, g, "zero %d %d", 3*mib, 2*mib)
	waitFor(t, "fault count", func() bool { return s.Stats().Faults == size/4096 })
	st := s.Stats()
	if st.ZeroPages != uint64(holeBytes/4096) || st.Faults != size/4096 {
		t.Errorf("stats %+v: want %d zero pages of %d faults", st, holeBytes/4096, size/4096)
	}
}

func TestRemove(t *testing.T) {
	skipUnlessUFFD(t)
	const size = 8 * mib
	s := startServer(t, Config{MemFile: makeMemFile(t, size)})
	g := startGuest(t)
	do(t, g, "%s", connectCmd(s.Server, size, 4096))
	do(t, g, "check 0 %d", 2*mib)       // populated from the file
	do(t, g, "write %d %d 7", mib, mib) // dirtied by the guest
	do(t, g, "dontneed 0 %d", 2*mib)    // balloon: REMOVE
	do(t, g, "zero 0 %d", 2*mib)
	do(t, g, "dontneed %d %d", 4*mib, mib) // never touched
	do(t, g, "zero %d %d", 4*mib, mib)
	do(t, g, "check %d %d", 2*mib, 2*mib)
	do(t, g, "check %d %d", 5*mib, 3*mib)
	do(t, g, "write %d %d 9", 4*mib, 4*kib) // refilled after remove, then removed again
	do(t, g, "dontneed %d %d", 4*mib, 4*kib)
	do(t, g, "zero %d %d", 4*mib, 4*kib)
	waitFor(t, "zero page count", func() bool { return s.Stats().ZeroPages == (3*mib)/4096+1 })
	st := s.Stats()
	if st.Removes != 3 || st.RemovedBytes != 3*mib+4*kib {
		t.Errorf("stats %+v: want 3 removes of %d bytes", st, 3*mib+4*kib)
	}
}

func TestUnmapEvent(t *testing.T) {
	skipUnlessUFFD(t)
	const size = 8 * mib
	s := startServer(t, Config{MemFile: makeMemFile(t, size), Prefetch: true})
	g := startGuest(t)
	do(t, g, "%s features=%d", connectCmd(s.Server, size, 4096), uffdguest.FeatureEventUnmap)
	do(t, g, "unmap %d %d", 2*mib, 2*mib)
	do(t, g, "check 0 %d", 2*mib)
	do(t, g, "check %d %d", 4*mib, 4*mib)
	waitFor(t, "prefetch", func() bool { return s.Stats().PrefetchDone })
	if st := s.Stats(); st.Removes != 1 || st.RemovedBytes != 2*mib || st.Errors != 0 {
		t.Errorf("stats %+v: want one 2 MiB unmap", st)
	}
}

func TestPrefetchDetach(t *testing.T) {
	skipUnlessUFFD(t)
	const size = 64 * mib
	mf := makeMemFile(t, size, extent{10 * mib, 12 * mib})
	s := startServer(t, Config{MemFile: mf, Prefetch: true, Detach: true})
	g := startGuest(t)
	do(t, g, "%s", connectCmd(s.Server, size, 4096))
	waitFor(t, "detach", func() bool { return s.Stats().Detached })
	st := s.Stats()
	if !st.PrefetchDone || st.PrefetchDuration <= 0 || st.PrefetchedBytes+uint64(st.Faults*4096) < size-2*mib {
		t.Errorf("stats after prefetch %+v", st)
	}
	// The VM no longer needs the handler.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	do(t, g, "check 0 %d", size)
	do(t, g, "dontneed %d %d", mib, 3*mib)
	do(t, g, "zero %d %d", mib, 3*mib)
	do(t, g, "write %d %d 5", mib, mib)
	do(t, g, "expect %d %d 5", mib, mib)
	if got := s.Stats().Faults; got != st.Faults {
		t.Errorf("faults grew from %d to %d after detach", st.Faults, got)
	}
}

// TestPrefetchRacesFaultsAndRemoves runs faults, removes and the prefetch at
// the same time; every page must end up right.
func TestPrefetchRacesFaultsAndRemoves(t *testing.T) {
	skipUnlessUFFD(t)
	const size = 64 * mib
	for round := 0; round < 3; round++ {
		s := startServer(t, Config{MemFile: makeMemFile(t, size, extent{20 * mib, 21 * mib}), Prefetch: true})
		g := startGuest(t)
		do(t, g, "%s", connectCmd(s.Server, size, 4096))
		for off := int64(size - 4*mib); off >= 0; off -= 4 * mib {
			do(t, g, "check %d %d", off+2*mib, 2*mib)
			do(t, g, "dontneed %d %d", off, mib)
		}
		waitFor(t, "prefetch", func() bool { return s.Stats().PrefetchDone })
		for off := int64(0); off < size; off += 4 * mib {
			do(t, g, "zero %d %d", off, mib)
			do(t, g, "check %d %d", off+mib, 3*mib)
		}
		if st := s.Stats(); st.Errors != 0 || st.Removes != size/(4*mib) {
			t.Errorf("round %d: stats %+v", round, st)
		}
	}
}

func TestHugePages(t *testing.T) {
	skipUnlessUFFD(t)
	const size = 32 * mib
	ensureHugePages(t, size/(2*mib)+2)
	for _, prefetch := range []bool{false, true} {
		t.Run(fmt.Sprintf("prefetch=%v", prefetch), func(t *testing.T) {
			mf := makeMemFile(t, size, extent{4 * mib, 8 * mib}, extent{9 * mib, 9*mib + 4*kib})
			s := startServer(t, Config{MemFile: mf, Prefetch: prefetch, Detach: prefetch})
			g := startGuest(t)
			do(t, g, "%s", connectCmd(s.Server, size, 2*mib))
			if prefetch {
				waitFor(t, "detach", func() bool { return s.Stats().Detached })
			}
			do(t, g, "check 0 %d", size)
			do(t, g, "zero %d %d", 4*mib, 4*mib)
			do(t, g, "dontneed %d %d", 16*mib, 4*mib)
			do(t, g, "zero %d %d", 16*mib, 4*mib)
			do(t, g, "check %d %d", 20*mib, 12*mib)
			if !prefetch {
				// 16 pages, 2 of them holes; the 2 removed pages fault again.
				waitFor(t, "fault count", func() bool { return s.Stats().Faults == 18 })
				if st := s.Stats(); st.ZeroPages != 4 || st.Removes != 1 || st.PagesCopied != 14 {
					t.Errorf("stats %+v: want 4 zero huge pages, 14 copies, 1 remove", st)
				}
			}
		})
	}
}

// ensureHugePages makes sure n free 2 MiB pages exist, raising
// vm.nr_hugepages for the test if needed, or skips.
func ensureHugePages(t *testing.T, n int) {
	t.Helper()
	const knob = "/proc/sys/vm/nr_hugepages"
	read := func(p string) int {
		b, err := os.ReadFile(p)
		if err != nil {
			return -1
		}
		v, _ := strconv.Atoi(strings.TrimSpace(string(b)))
		return v
	}
	free := read("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages")
	if free >= n {
		return
	}
	old := read(knob)
	if old < 0 {
		t.Skip("no 2 MiB huge pages: cannot read " + knob)
	}
	if err := os.WriteFile(knob, []byte(strconv.Itoa(old+n-max(free, 0))), 0); err != nil {
		t.Skipf("no free 2 MiB huge pages and cannot raise %s: %v", knob, err)
	}
	t.Cleanup(func() { os.WriteFile(knob, []byte(strconv.Itoa(old)), 0) })
	if got := read("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages"); got < n {
		t.Skipf("only %d free 2 MiB huge pages after raising %s, want %d", got, knob, n)
	}
}

func TestHandshakeErrors(t *testing.T) {
	skipUnlessUFFD(t)
	const size = 4 * mib
	raw := func(s string) string { return "raw=" + hex.EncodeToString([]byte(s)) }
	region := func(base, sz, off, ps uint64) string {
		return fmt.Sprintf(`{"base_host_virt_addr":%d,"size":%d,"offset":%d,"page_size":%d}`, base, sz, off, ps)
	}
	for _, tc := range []struct {
		name string
		opts []string
		want string
	}{
		{"malformed json", []string{raw(`[{"base_host_virt_addr": 1,`)}, "malformed region JSON"},
		{"not json", []string{raw(`hello`)}, "malformed region JSON"},
		{"no fd", []string{"nofd"}, "no userfaultfd attached"},
		{"zero regions", []string{raw(`[]`)}, "region list is empty"},
		{"region beyond file", []string{raw("[" + region(1<<30, 8*mib, 0, 4096) + "]")}, "exceeds the memory file size"},
		{"offset beyond file", []string{raw("[" + region(1<<30, mib, 4*mib, 4096) + "]")}, "exceeds the memory file size"},
		{"overlap", []string{raw("[" + region(1<<30, 2*mib, 0, 4096) + "," + region(1<<30+mib, mib, 2*mib, 4096) + "]")}, "overlap in guest address"},
		{"page size", []string{raw("[" + region(1<<30, mib, 0, 8192) + "]")}, "must be 4096 or 2097152"},
		{"missing field", []string{raw(`[{"size":4096,"offset":0}]`)}, "base_host_virt_addr is missing"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := startServer(t, Config{MemFile: makeMemFile(t, size), AcceptTimeout: 5 * time.Second})
			g := startGuest(t)
			do(t, g, "%s", connectCmd(s.Server, size, 4096, tc.opts...))
			do(t, g, "close") // a truncated message is complete once the peer hangs up
			err := s.wait(t)
			if !errors.Is(err, ErrBadHandshake) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Serve = %v, want ErrBadHandshake mentioning %q", err, tc.want)
			}
		})
	}
}

func TestHandshakeWrongPeer(t *testing.T) {
	skipUnlessUFFD(t)
	s := startServer(t, Config{MemFile: makeMemFile(t, mib), PeerPID: 1})
	g := startGuest(t)
	// The handler may hang up before the guest has sent anything.
	g.Do(30*time.Second, connectCmd(s.Server, mib, 4096))
	if err := s.wait(t); !errors.Is(err, ErrBadHandshake) || !strings.Contains(err.Error(), "not the expected Firecracker pid 1") {
		t.Fatalf("Serve = %v", err)
	}
}

func TestAcceptTimeout(t *testing.T) {
	skipUnlessUFFD(t)
	s := startServer(t, Config{MemFile: makeMemFile(t, mib), AcceptTimeout: 100 * time.Millisecond})
	err := s.wait(t)
	if !errors.Is(err, ErrAcceptTimeout) || !strings.Contains(err.Error(), "nobody connected") {
		t.Fatalf("Serve = %v, want ErrAcceptTimeout", err)
	}
	if _, err := os.Stat(s.cfg.SocketPath); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket left behind: %v", err)
	}
}

func TestServeStops(t *testing.T) {
	skipUnlessUFFD(t)
	t.Run("close before connect", func(t *testing.T) {
		s := startServer(t, Config{MemFile: makeMemFile(t, mib)})
		time.Sleep(10 * time.Millisecond)
		s.Close()
		if err := s.wait(t); !errors.Is(err, ErrClosed) {
			t.Fatalf("Serve = %v, want ErrClosed", err)
		}
		if err := s.Serve(context.Background()); err == nil {
			t.Fatal("second Serve succeeded")
		}
	})
	t.Run("cancel while serving", func(t *testing.T) {
		s, err := Listen(Config{SocketPath: filepath.Join(t.TempDir(), "s"), MemFile: makeMemFile(t, mib)})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		ctx, cancel := context.WithCancel(context.Background())
		errc := make(chan error, 1)
		go func() { errc <- s.Serve(ctx) }()
		g := startGuest(t)
		do(t, g, "%s", connectCmd(s, mib, 4096))
		<-s.Ready()
		cancel()
		if err := <-errc; !errors.Is(err, context.Canceled) {
			t.Fatalf("Serve = %v, want context.Canceled", err)
		}
	})
}

func TestListenErrors(t *testing.T) {
	dir := t.TempDir()
	mf := filepath.Join(dir, "mem")
	os.WriteFile(mf, make([]byte, 8192), 0o600)
	empty := filepath.Join(dir, "empty")
	os.WriteFile(empty, nil, 0o600)
	regular := filepath.Join(dir, "regular")
	os.WriteFile(regular, []byte("x"), 0o600)
	for _, tc := range []struct {
		cfg  Config
		want error
		msg  string
	}{
		{Config{MemFile: mf}, ErrConfig, "SocketPath is empty"},
		{Config{SocketPath: filepath.Join(dir, "s")}, ErrConfig, "MemFile is empty"},
		{Config{SocketPath: "/" + strings.Repeat("x", 120), MemFile: mf}, ErrConfig, "at most 64 bytes"},
		{Config{SocketPath: filepath.Join(dir, "s"), MemFile: mf, AcceptTimeout: -1}, ErrConfig, "must not be negative"},
		{Config{SocketPath: filepath.Join(dir, "s"), MemFile: filepath.Join(dir, "none")}, ErrMemFile, "open memory file"},
		{Config{SocketPath: filepath.Join(dir, "s"), MemFile: empty}, ErrMemFile, "positive multiple of 4096"},
		{Config{SocketPath: filepath.Join(dir, "s"), MemFile: dir}, ErrMemFile, "not a regular file"},
		{Config{SocketPath: regular, MemFile: mf}, ErrConfig, "not a socket"},
		{Config{SocketPath: filepath.Join(dir, "nodir", "s"), MemFile: mf}, nil, "bind"},
	} {
		s, err := Listen(tc.cfg)
		if err == nil {
			s.Close()
			t.Errorf("Listen(%+v) succeeded", tc.cfg)
			continue
		}
		if (tc.want != nil && !errors.Is(err, tc.want)) || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("Listen(%+v) = %v, want %v mentioning %q", tc.cfg, err, tc.want, tc.msg)
		}
	}
	if b, _ := os.ReadFile(regular); string(b) != "x" {
		t.Error("Listen clobbered a regular file at SocketPath")
	}
}

func TestLongSocketPath(t *testing.T) {
	dir := t.TempDir()
	mf := filepath.Join(dir, "mem")
	os.WriteFile(mf, make([]byte, 8192), 0o600)
	long := filepath.Join(dir, strings.Repeat("d", 60), strings.Repeat("e", 60))
	if err := os.MkdirAll(long, 0o700); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(long, "uffd.sock")
	s, err := Listen(Config{SocketPath: sock, MemFile: mf})
	if err != nil {
		t.Fatalf("Listen on a %d-byte path: %v", len(sock), err)
	}
	defer s.Close()
	if fi, err := os.Stat(sock); err != nil || fi.Mode().Type() != os.ModeSocket {
		t.Fatalf("no socket at the long path: %v", err)
	}
	// Connect the way Firecracker would: relative to the directory.
	t.Chdir(long)
	c, err := net.Dial("unix", "uffd.sock")
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	c.Close()
}

func TestStaleSocketReplaced(t *testing.T) {
	dir := t.TempDir()
	mf := filepath.Join(dir, "mem")
	os.WriteFile(mf, make([]byte, 8192), 0o600)
	sock := filepath.Join(dir, "s")
	s1, err := Listen(Config{SocketPath: sock, MemFile: mf})
	if err != nil {
		t.Fatal(err)
	}
	s1.lfd, s1.cfg.SocketPath = -1, "" // leak the file, as a crashed handler would
	defer s1.Close()
	s2, err := Listen(Config{SocketPath: sock, MemFile: mf})
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	fi, err := os.Stat(sock)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v, %v; want 0600", fi.Mode(), err)
	}
	s2.Close()
	if _, err := os.Stat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Close left the socket: %v", err)
	}
}

// handlerProc is a handler in a child process, so it can be killed.
type handlerProc struct {
	cmd   *exec.Cmd
	lines chan string
}

func startHandlerProc(t *testing.T, sock, memFile string, prefetch bool) *handlerProc {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	b := map[bool]string{true: "1", false: "0"}
	cmd.Env = append(os.Environ(), "UFFD_TEST_ROLE=handler", "UFFD_TEST_SOCKET="+sock, "UFFD_TEST_MEMFILE="+memFile,
		"UFFD_TEST_PREFETCH="+b[prefetch], "UFFD_TEST_DETACH="+b[prefetch])
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	h := &handlerProc{cmd: cmd, lines: make(chan string, 8)}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			h.lines <- sc.Text()
		}
		close(h.lines)
	}()
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	h.expect(t, "ok ready")
	return h
}

func (h *handlerProc) expect(t *testing.T, want string) {
	t.Helper()
	select {
	case l := <-h.lines:
		if l != want {
			t.Fatalf("handler said %q, want %q", l, want)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("handler did not say %q", want)
	}
}

func (h *handlerProc) kill(t *testing.T) {
	h.cmd.Process.Kill()
	h.cmd.Wait()
}

// TestHandlerDies documents what the guest sees when the handler process
// dies, in the three possible situations.
func TestHandlerDies(t *testing.T) {
	skipUnlessUFFD(t)
	const size = 8 * mib
	mf := makeMemFile(t, size)

	// Firecracker keeps its own copy of the userfaultfd, so the kernel never
	// releases it: a thread touching a missing page sleeps for ever. The
	// sleep is killable, so the supervisor can (and must) SIGKILL the VM.
	t.Run("firecracker semantics: fault blocks, SIGKILL works", func(t *testing.T) {
		sock := filepath.Join(t.TempDir(), "s")
		h := startHandlerProc(t, sock, mf, false)
		g := startGuest(t)
		do(t, g, "connect %s %s %d 4096", sock, mf, size)
		do(t, g, "check 0 %d", mib)
		h.kill(t)
		if _, err := g.Do(300*time.Millisecond, fmt.Sprintf("check %d %d", mib, mib)); !errors.Is(err, uffdguest.ErrNoReply) {
			t.Fatalf("touching an unserved page after the handler died: %v, want a blocked thread", err)
		}
		start := time.Now()
		if err := g.Kill(5 * time.Second); err != nil && !strings.Contains(err.Error(), "killed") {
			t.Fatalf("guest blocked on a dead handler is not killable: %v", err)
		}
		t.Logf("blocked guest died %s after SIGKILL", time.Since(start).Round(time.Millisecond))
	})

	// A guest that dropped its copy of the userfaultfd does not hang: the
	// kernel releases the userfaultfd with the handler, wakes the waiter and
	// turns missing pages into zero-filled ones, silently losing the
	// snapshot's contents. Firecracker does not do this.
	t.Run("guest closed its uffd: faults become zero pages", func(t *testing.T) {
		sock := filepath.Join(t.TempDir(), "s")
		h := startHandlerProc(t, sock, mf, false)
		g := startGuest(t)
		do(t, g, "connect %s %s %d 4096 closeuffd", sock, mf, size)
		do(t, g, "check 0 %d", mib)
		h.kill(t)
		do(t, g, "zero %d %d", mib, mib)
		do(t, g, "check 0 %d", mib)
	})

	// After prefetch and detach the VM no longer depends on the handler.
	t.Run("after detach: guest unaffected", func(t *testing.T) {
		sock := filepath.Join(t.TempDir(), "s")
		h := startHandlerProc(t, sock, mf, true)
		g := startGuest(t)
		do(t, g, "connect %s %s %d 4096", sock, mf, size)
		h.expect(t, "ok detached")
		h.kill(t)
		do(t, g, "check 0 %d", size)
		do(t, g, "dontneed 0 %d", 2*mib)
		do(t, g, "zero 0 %d", 2*mib)
	})
}
