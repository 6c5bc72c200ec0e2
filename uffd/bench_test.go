//go:build linux

package uffd

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mvm-dev/microvm/internal/uffdguest"
	"golang.org/x/sys/unix"
)

// Fault benchmark: a guest thread (in a child process) touches every 4 KiB
// page of a 16 MiB region once, prefetch off, memory file in the page cache
// and pre-faulted in the handler. Two guests run side by side, one served by
// this package (go), one by testdata/chandler.c (c, compiled with cc), and
// the touches alternate between them 1 MiB at a time (256 faults: 3 to
// 50 ms on the machines measured so far), which handler goes first
// alternating too, so that whatever else the machine does at any moment
// weighs on both alike. Only the touch loops are timed (the guests measure
// them). Each iteration is one round over the
// whole region; go/c-median is the median of the per-round ratios (C's touch
// time over Go's: above 1 when Go is faster), go/c-min the worst round,
// go/c-median-chunk the median over every pair of 1 MiB touches. CPU
// figures are per fault: the Go process's CPU during its touches, and the C
// handler's own getrusage from the handshake to its exit (it sleeps in poll
// while the other guest runs).
//
// Sub-benchmarks: load=none, and load=spin with a busy-looping process
// beside (on a 2-CPU machine, one more runnable thread than the handler and
// the guest: every wake-up competes for a CPU). Run with e.g.
// -bench 'Fault$' -benchtime 20x.

const (
	benchFaultSize  = 16 * mib
	benchFaultChunk = 1 * mib
)

func BenchmarkFault(b *testing.B) {
	skipUnlessUFFD(b)
	bin := ""
	if cc, err := exec.LookPath("cc"); err != nil {
		b.Log("no C compiler (cc): skipping the C baseline (testdata/chandler.c)")
	} else {
		bin = filepath.Join(b.TempDir(), "chandler")
		if out, err := exec.Command(cc, "-O2", "-o", bin, "testdata/chandler.c").CombinedOutput(); err != nil {
			b.Fatalf("cc testdata/chandler.c: %v\n%s", err, out)
		}
	}
	mf := makeMemFile(b, benchFaultSize)
	for _, load := range []string{"none", "spin"} {
		b.Run("load="+load, func(b *testing.B) {
			if load == "spin" {
				startSpinner(b)
			}
			benchFault(b, mf, bin)
		})
	}
}

// startSpinner starts a child process that busy-loops until the benchmark
// ends.
func startSpinner(b *testing.B) {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "UFFD_TEST_ROLE=spin")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
}

// cHandler is a running testdata/chandler.c.
type cHandler struct {
	cmd *exec.Cmd
	out *bufio.Reader
}

func startCHandler(b *testing.B, bin, sock, mf string) *cHandler {
	cmd := exec.Command(bin, sock, mf)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	c := &cHandler{cmd: cmd, out: bufio.NewReader(out)}
	b.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	if l, err := c.out.ReadString('\n'); err != nil || l != "ready\n" {
		b.Fatalf("chandler: %q %v", l, err)
	}
	return c
}

// finish waits for the handler to exit (its peer hung up) and returns the
// CPU it used serving.
func (c *cHandler) finish(b *testing.B, wantFaults int64) time.Duration {
	l, err := c.out.ReadString('\n')
	var faults, cpuNS int64
	if _, err2 := fmt.Sscanf(l, "faults %d cpu-ns %d\n", &faults, &cpuNS); err != nil || err2 != nil || faults != wantFaults {
		b.Fatalf("chandler: %q %v %v (want %d faults)", l, err, err2, wantFaults)
	}
	if err := c.cmd.Wait(); err != nil {
		b.Fatalf("chandler: %v", err)
	}
	return time.Duration(cpuNS)
}

func benchFault(b *testing.B, mf, bin string) {
	const pages = benchFaultSize / 4096
	gGo := startGuest(b)
	var gC *uffdguest.Child
	if bin != "" {
		gC = startGuest(b)
	}
	var goCPU, cCPU time.Duration
	var gos, cs, ratios, chunkRatios []float64
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		s := startServer(b, Config{MemFile: mf, Populate: true})
		<-s.populateDone
		do(b, gGo, "%s", connectCmd(s.Server, benchFaultSize, 4096))
		var c *cHandler
		if bin != "" {
			sock := filepath.Join(b.TempDir(), "c.sock")
			c = startCHandler(b, bin, sock, mf)
			do(b, gC, "connect %s %s %d 4096", sock, mf, benchFaultSize)
		}
		var dg, dc time.Duration
		for k := int64(0); k < benchFaultSize/benchFaultChunk; k++ {
			var kg, kc time.Duration
			runGo := func() {
				u0, s0 := selfCPU()
				kg = touchCmd(b, gGo, "touch", k*benchFaultChunk, benchFaultChunk)
				u1, s1 := selfCPU()
				goCPU += u1 - u0 + s1 - s0
			}
			runC := func() {
				if c != nil {
					kc = touchCmd(b, gC, "touch", k*benchFaultChunk, benchFaultChunk)
				}
			}
			if (int64(i)+k)%2 == 0 {
				runGo()
				runC()
			} else {
				runC()
				runGo()
			}
			dg, dc = dg+kg, dc+kc
			chunkRatios = append(chunkRatios, kc.Seconds()/kg.Seconds())
		}
		do(b, gGo, "close")
		if err := s.wait(b); err != nil {
			b.Fatal(err)
		}
		if st := s.Stats(); st.Faults != pages {
			b.Fatalf("served %d faults, want %d", st.Faults, pages)
		}
		s.Close()
		gos = append(gos, pages/dg.Seconds())
		if c != nil {
			do(b, gC, "close")
			cCPU += c.finish(b, pages)
			cs = append(cs, pages/dc.Seconds())
			ratios = append(ratios, dc.Seconds()/dg.Seconds())
		}
	}
	b.ReportMetric(median(gos), "go-faults/s")
	b.ReportMetric(float64(goCPU.Nanoseconds())/float64(b.N*pages), "go-cpu-ns/fault")
	if bin == "" {
		return
	}
	b.ReportMetric(median(cs), "c-faults/s")
	b.ReportMetric(float64(cCPU.Nanoseconds())/float64(b.N*pages), "c-cpu-ns/fault")
	b.ReportMetric(median(ratios), "go/c-median")
	b.ReportMetric(slices.Min(ratios), "go/c-min")
	b.ReportMetric(slices.Max(ratios), "go/c-max")
	b.ReportMetric(median(chunkRatios), "go/c-median-chunk")
}

// median returns the median of xs (which it sorts).
func median(xs []float64) float64 {
	slices.Sort(xs)
	if n := len(xs); n%2 == 0 {
		return (xs[n/2-1] + xs[n/2]) / 2
	}
	return xs[len(xs)/2]
}

// selfCPU returns the user and system CPU time this process has used.
func selfCPU() (user, sys time.Duration) {
	var ru unix.Rusage
	unix.Getrusage(unix.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano()), time.Duration(ru.Stime.Nano())
}

// BenchmarkFaultDuringPrefetch: the guest touches 256 MiB backwards while
// the prefetch copies it forwards, against the same touch without prefetch.
// Reports the guest's time to touch everything and how many of its touches
// faulted (the rest found the page already prefetched).
func BenchmarkFaultDuringPrefetch(b *testing.B) {
	skipUnlessUFFD(b)
	mf := makeMemFile(b, benchFaultSize)
	g := startGuest(b)
	for _, prefetch := range []bool{false, true} {
		b.Run(fmt.Sprintf("prefetch=%v", prefetch), func(b *testing.B) {
			var total time.Duration
			var faults uint64
			for i := 0; i < b.N; i++ {
				s := startServer(b, Config{MemFile: mf, Populate: true, Prefetch: prefetch})
				<-s.populateDone
				do(b, g, "%s", connectCmd(s.Server, benchFaultSize, 4096))
				total += touchCmd(b, g, "touchback", 0, benchFaultSize)
				do(b, g, "close")
				s.wait(b)
				faults += s.Stats().Faults
				s.Close()
			}
			b.ReportMetric(float64(faults)/float64(b.N), "faults/op")
			b.ReportMetric(float64(total.Milliseconds())/float64(b.N), "touch-ms/op")
		})
	}
}

// touchCmd has the guest read one byte of each page of [off, off+n) with
// cmd (touch or touchback) and returns the time it took.
func touchCmd(b *testing.B, g *uffdguest.Child, cmd string, off, n int64) time.Duration {
	out, err := g.Do(120*time.Second, fmt.Sprintf("%s %d %d", cmd, off, n))
	if err != nil {
		b.Fatal(err)
	}
	ns, err := strconv.ParseInt(strings.Fields(out)[0], 10, 64)
	if err != nil {
		b.Fatal(err)
	}
	return time.Duration(ns)
}

// Prefetch benchmark: background prefetch of 1 GiB (no faults), against
// copying the same file mapping into fresh anonymous memory (page faults,
// zeroing and copy: what UFFDIO_COPY replaces) and into pre-faulted memory
// (the memcpy bandwidth limit). Run with e.g. -bench Prefetch -benchtime 3x.
func BenchmarkPrefetch(b *testing.B) {
	skipUnlessUFFD(b)
	const size = 1 << 30
	mf := makeMemFile(b, size)

	for _, chunk := range []uint64{64 * kib, 128 * kib, 256 * kib, 1 * mib} {
		b.Run(fmt.Sprintf("uffd-chunk=%dK", chunk/kib), func(b *testing.B) {
			old := prefetchChunk
			prefetchChunk = chunk
			defer func() { prefetchChunk = old }()
			benchPrefetch(b, mf, size)
		})
	}
	src := mapFile(b, mf, size)
	b.Run("memcpy-fresh", func(b *testing.B) {
		var total time.Duration
		for i := 0; i < b.N; i++ {
			dst, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
			if err != nil {
				b.Fatal(err)
			}
			unix.Madvise(dst, unix.MADV_NOHUGEPAGE) // 4 KiB pages, like the guest
			start := time.Now()
			copy(dst, src)
			total += time.Since(start)
			unix.Munmap(dst)
		}
		b.ReportMetric(float64(b.N)/total.Seconds(), "GiB/s")
	})
	b.Run("memcpy-warm", func(b *testing.B) {
		dst := make([]byte, size)
		copy(dst, src)
		var total time.Duration
		for i := 0; i < b.N; i++ {
			start := time.Now()
			copy(dst, src)
			total += time.Since(start)
		}
		b.ReportMetric(float64(b.N)/total.Seconds(), "GiB/s")
	})
}

func benchPrefetch(b *testing.B, mf string, size int64) {
	g := startGuest(b)
	var total time.Duration
	var bytes uint64
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		s := startServer(b, Config{MemFile: mf, Populate: true, Prefetch: true})
		<-s.populateDone
		do(b, g, "%s", connectCmd(s.Server, size, 4096))
		b.StartTimer()
		waitFor(b, "prefetch", func() bool { return s.Stats().PrefetchDone })
		b.StopTimer()
		st := s.Stats()
		total += st.PrefetchDuration
		bytes += st.PrefetchedBytes
		do(b, g, "close")
		s.wait(b)
		s.Close()
	}
	b.ReportMetric(float64(bytes)/(1<<30)/total.Seconds(), "GiB/s")
}

func mapFile(b *testing.B, path string, size int) []byte {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer unix.Close(fd)
	m, err := unix.Mmap(fd, 0, size, unix.PROT_READ, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { unix.Munmap(m) })
	return m
}
