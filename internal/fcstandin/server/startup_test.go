package server

import (
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mvm-dev/microvm/internal/fcstandin"
)

// BenchmarkStartup measures what every VM-creating test pays for its
// stand-in: exec to the API socket accepting ("accept-ms"), to the answer
// to a first validated request, PUT /machine-config ("ready-ms"), and the
// process's user+sys CPU time to that point ("cpu-ms"). "cached" starts
// with a warm spec cache, "uncached" with FCSTANDIN_SPEC_CACHE=off.
//
//	go -C internal/fcstandin/server test -run XXX -bench Startup .
func BenchmarkStartup(b *testing.B) {
	bin := fcstandin.Build(b)
	spec := fcstandin.SpecDir(b)
	for _, bc := range []struct{ name, cache string }{
		{"cached", b.TempDir()},
		{"uncached", specCacheOff},
	} {
		b.Run(bc.name, func(b *testing.B) {
			env := append(os.Environ(), "FCSTANDIN_SPEC_DIR="+spec, "FCSTANDIN_SPEC_CACHE="+bc.cache)
			dir, err := os.MkdirTemp("", "fcsb")
			if err != nil {
				b.Fatal(err)
			}
			defer os.RemoveAll(dir)
			startOnce(b, bin, dir, env) // warm the cache and the page cache
			var accept, ready, cpu time.Duration
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				a, r, c := startOnce(b, bin, dir, env)
				accept += a
				ready += r
				cpu += c
			}
			n := float64(b.N) * 1e6
			b.ReportMetric(float64(accept)/n, "accept-ms/op")
			b.ReportMetric(float64(ready)/n, "ready-ms/op")
			b.ReportMetric(float64(cpu)/n, "cpu-ms/op")
		})
	}
}

// startOnce starts the stand-in, waits for its socket and a first answer,
// kills it and returns the timings.
func startOnce(b *testing.B, bin, dir string, env []string) (accept, ready, cpu time.Duration) {
	b.Helper()
	sock := filepath.Join(dir, "api.sock")
	os.Remove(sock)
	cmd := exec.Command(bin, "--api-sock", sock, "--id", "bench")
	cmd.Env = env
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() {
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()
		cpu = cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
		os.Remove(sock)
	}()
	var c net.Conn
	for {
		var err error
		if c, err = net.Dial("unix", sock); err == nil {
			break
		}
		if time.Since(t0) > 20*time.Second {
			b.Fatalf("socket never came up: %v", err)
		}
		time.Sleep(100 * time.Microsecond)
	}
	accept = time.Since(t0)
	defer c.Close()
	body := `{"vcpu_count":2,"mem_size_mib":256}`
	fmt.Fprintf(c, "PUT /machine-config HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
	buf := make([]byte, 512)
	n, err := io.ReadAtLeast(c, buf, len("HTTP/1.1 204"))
	if err != nil || !strings.HasPrefix(string(buf[:n]), "HTTP/1.1 204") {
		b.Fatalf("first request: %v %q", err, buf[:n])
	}
	ready = time.Since(t0)
	return accept, ready, 0
}

// BenchmarkLoadSpec measures preparing the validator in process: from a
// cache entry ("hit", as most starts do) and from the spec ("prepare").
func BenchmarkLoadSpec(b *testing.B) {
	dir := fcstandin.SpecDir(b)
	cache := specCache{dir: b.TempDir(), buildID: "bench"}
	if _, err := loadSpec(dir, fcstandin.APILatest, cache); err != nil {
		b.Fatal(err)
	}
	for _, bc := range []struct {
		name  string
		cache specCache
	}{{"hit", cache}, {"prepare", specCache{}}} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				s, err := loadSpec(dir, fcstandin.APILatest, bc.cache)
				if err != nil {
					b.Fatal(err)
				}
				if s.cached != (bc.name == "hit") {
					b.Fatalf("cached = %v", s.cached)
				}
			}
		})
	}
}
