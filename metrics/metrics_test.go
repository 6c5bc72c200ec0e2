package metrics

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// realLine is shaped like a Firecracker v1.7 report: id, properties,
// nested latency aggregates, per-device groups.
func realLine(ms int64, readBytes, exits, loadSnap uint64) string {
	return fmt.Sprintf(`{"utc_timestamp_ms":%d,"id":"vm-1","properties":{"k":"v"},`+
		`"api_server":{"process_startup_time_us":1200,"process_startup_time_cpu_us":800,"sync_response_fails":0},`+
		`"block":{"read_bytes":%d,"write_bytes":0,"read_count":1},`+
		`"block_rootfs":{"read_bytes":%d,"write_bytes":7,"read_count":1,"write_count":2,"rate_limiter_throttled_events":0},`+
		`"net_eth0":{"rx_bytes_count":100,"tx_bytes_count":50,"rx_packets_count":2,"tx_packets_count":1,"tx_malformed_frames":0,"no_rx_avail_buffer":1},`+
		`"latencies_us":{"load_snapshot":%d,"pause_vm":0},`+
		`"vcpu":{"exit_io_in":%d,"exit_io_in_agg":{"min_us":3,"max_us":90,"sum_us":400}},`+
		`"signals":{"sigbus":0,"sigpipe":1},`+
		`"put_api_requests":{"actions_count":1,"actions_fails":0},`+
		`"mmds":{"rx_accepted":1,"tx_bytes":30},"vsock":{"rx_bytes_count":5,"conns_added":1},`+
		`"logger":{"missed_metrics_count":0}}`+"\n", ms, readBytes, readBytes, loadSnap, exits)
}

func TestParseAndAbsolute(t *testing.T) {
	r, err := Parse([]byte(realLine(1700000000123, 4096, 10, 0)))
	if err != nil {
		t.Fatal(err)
	}
	if r.Time.UnixMilli() != 1700000000123 {
		t.Errorf("time = %v", r.Time)
	}
	for k, want := range map[string]uint64{
		"block_rootfs.read_bytes": 4096, "vcpu.exit_io_in_agg.max_us": 90, "vcpu.exit_io_in_agg.sum_us": 400,
		"api_server.process_startup_time_us": 1200, "signals.sigpipe": 1,
	} {
		if got, ok := r.Values[k]; !ok || got != want {
			t.Errorf("%s = %d (present %v), want %d", k, got, ok, want)
		}
	}
	if _, ok := r.Values["properties.k"]; ok {
		t.Error("properties parsed as metrics")
	}
	for k, abs := range map[string]bool{
		"latencies_us.load_snapshot": true, "api_server.process_startup_time_us": true,
		"api_server.sync_response_fails": false, "vcpu.exit_io_in_agg.min_us": true,
		"vcpu.exit_io_in_agg.sum_us": false, "signals.sigbus": true, "signals.sigpipe": false,
		"seccomp.num_faults": true, "balloon.balloon_size_mb": true, "balloon.inflate_count": false,
		"block_rootfs.read_bytes": false, "vhost_user_block_x.init_time_us": true,
	} {
		if Absolute(k) != abs {
			t.Errorf("Absolute(%s) = %v", k, !abs)
		}
	}
}

func TestParseHostile(t *testing.T) {
	for _, in := range []string{
		"", "not json", `[1,2]`, `{"a":{"b":1}}`, `{"utc_timestamp_ms":-1}`, `{"utc_timestamp_ms":"x"}`,
		`{"utc_timestamp_ms":1}{"utc_timestamp_ms":2}`, `{"utc_timestamp_ms":1` + strings.Repeat(" ", MaxLine) + `}`,
	} {
		if _, err := Parse([]byte(in)); !errors.Is(err, ErrMalformed) {
			t.Errorf("Parse(%.40q) err = %v, want ErrMalformed", in, err)
		}
	}
	r, err := Parse([]byte(`{"utc_timestamp_ms":1,"g":{"neg":-5,"frac":1.5,"big":18446744073709551615,"s":"x","deep":{"a":{"b":{"c":{"d":{"e":1}}}}}}}`))
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Values) != 1 || r.Values["g.big"] != 18446744073709551615 {
		t.Errorf("values = %v, want only g.big", r.Values)
	}
}

// fcWriter writes like firecracker: its own descriptor, O_RDWR without
// O_APPEND, from offset 0.
type fcWriter struct{ f *os.File }

func newWriter(t *testing.T, path string) *fcWriter {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return &fcWriter{f}
}

func (w *fcWriter) write(t *testing.T, s string) {
	t.Helper()
	if _, err := w.f.WriteString(s); err != nil {
		t.Fatal(err)
	}
}

func collect(t *testing.T, m, s string) Totals {
	t.Helper()
	tot, err := Collect(m, s)
	if err != nil {
		t.Fatal(err)
	}
	return tot
}

func TestTotalsAcrossFlushesReadersAndProcesses(t *testing.T) {
	dir := t.TempDir()
	m, s := filepath.Join(dir, "metrics.json"), filepath.Join(dir, "metrics.state")
	if tot := collect(t, m, s); tot.Reports != 0 {
		t.Fatalf("no file: %+v", tot)
	}
	if _, err := Relaunch(m, s); err != nil { // first process
		t.Fatal(err)
	}
	w := newWriter(t, m)
	for i := range 50 {
		w.write(t, realLine(int64(1000+i), 4096, 10, uint64(i)))
		if i%7 == 0 {
			collect(t, m, s)
		}
	}
	// An incomplete line is left for later.
	half := realLine(2000, 4096, 10, 77)
	w.write(t, half[:40])
	tot := collect(t, m, s)
	if tot.Reports != 50 || tot.Counters["block_rootfs.read_bytes"] != 50*4096 || tot.Counters["vcpu.exit_io_in"] != 500 {
		t.Fatalf("after 50 flushes: reports %d read %d exits %d", tot.Reports, tot.Counters["block_rootfs.read_bytes"], tot.Counters["vcpu.exit_io_in"])
	}
	if tot.Gauges["latencies_us.load_snapshot"] != 49 || tot.Gauges["vcpu.exit_io_in_agg.max_us"] != 90 {
		t.Errorf("gauges = %v", tot.Gauges)
	}
	// A fresh reader (as after an mvm restart) counts nothing twice.
	if again := collect(t, m, s); again.Reports != 50 {
		t.Fatalf("second reader: %d reports", again.Reports)
	}
	w.write(t, half[40:])
	if tot := collect(t, m, s); tot.Reports != 51 || tot.Gauges["latencies_us.load_snapshot"] != 77 {
		t.Fatalf("completed line: %d reports, load %d", tot.Reports, tot.Gauges["latencies_us.load_snapshot"])
	}
	// The VM's firecracker is replaced: the old one's unread report is
	// taken, the file emptied, the new process writes from offset 0.
	w.write(t, realLine(3000, 1, 1, 0))
	tot, err := Relaunch(m, s)
	if err != nil {
		t.Fatal(err)
	}
	if tot.Processes != 2 || tot.Reports != 52 {
		t.Fatalf("relaunch: %+v", tot)
	}
	if fi, _ := os.Stat(m); fi.Size() != 0 {
		t.Fatalf("metrics file not emptied: %d bytes", fi.Size())
	}
	w2 := newWriter(t, m)
	w2.write(t, `{"utc_timestamp_ms":4000,"block_rootfs":{"read_bytes":10}}`+"\n")
	tot = collect(t, m, s)
	if want := uint64(51*4096 + 1 + 10); tot.Counters["block_rootfs.read_bytes"] != want || tot.Reports != 53 {
		t.Fatalf("after restart: read %d want %d, reports %d", tot.Counters["block_rootfs.read_bytes"], want, tot.Reports)
	}
	h := tot.Hypervisor()
	if h.Drives["rootfs"].ReadBytes != 51*4096+11 || h.Interfaces["eth0"].RxBytes != 52*100 || h.Processes != 2 ||
		h.Latencies["load_snapshot"] != 77*time.Microsecond || h.APIRequests != 52 || h.MMDS.Requests != 52 || h.Vsock.Connections != 52 {
		t.Errorf("hypervisor view = %+v", h)
	}
	if l, err := Load(s); err != nil || l.Reports != 53 {
		t.Errorf("Load = %d, %v", l.Reports, err)
	}
}

// Concurrent collectors in one or many processes (flock) and a writer:
// every report is counted exactly once.
func TestConcurrentCollectors(t *testing.T) {
	dir := t.TempDir()
	m, s := filepath.Join(dir, "metrics.json"), filepath.Join(dir, "metrics.state")
	w := newWriter(t, m)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := Collect(m, s); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	for i := range 300 {
		w.write(t, fmt.Sprintf(`{"utc_timestamp_ms":%d,"net_eth0":{"tx_bytes_count":3}}`+"\n", i))
	}
	close(stop)
	wg.Wait()
	if tot := collect(t, m, s); tot.Reports != 300 || tot.Counters["net_eth0.tx_bytes_count"] != 900 || tot.Malformed != 0 {
		t.Fatalf("reports %d tx %d malformed %d", tot.Reports, tot.Counters["net_eth0.tx_bytes_count"], tot.Malformed)
	}
}

// The owner trims the file by punching a hole over its head and blanking
// the cut line with NULs (package firecracker's trimFile): collected
// reports stay counted, later ones are read, nothing is misparsed.
func TestCollectAcrossTrim(t *testing.T) {
	dir := t.TempDir()
	m, s := filepath.Join(dir, "metrics.json"), filepath.Join(dir, "metrics.state")
	w := newWriter(t, m)
	line := realLine(1, 4096, 1, 0)
	for range 40 {
		w.write(t, line)
	}
	collect(t, m, s)
	for range 10 {
		w.write(t, line)
	}
	// Trim as firecracker's trimmer does: cut at a block boundary inside
	// the already collected part, blank the fragment up to its newline.
	cut := int64(len(line)*20) &^ 4095
	if err := unix.Fallocate(int(w.f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 0, cut); err != nil {
		t.Skipf("file system cannot punch holes: %v", err)
	}
	frag := int64(len(line)) - cut%int64(len(line))
	if _, err := w.f.WriteAt([]byte(strings.Repeat("\x00", int(frag))), cut); err != nil {
		t.Fatal(err)
	}
	tot := collect(t, m, s)
	if tot.Reports != 50 || tot.Malformed != 0 {
		t.Fatalf("after trim: %d reports, %d malformed", tot.Reports, tot.Malformed)
	}
	// A reader that lost its state meets the trimmed file: the hole and
	// the blanked fragment are skipped, whole lines counted.
	os.Remove(s)
	tot = collect(t, m, s)
	if want := uint64(50 - (cut+frag)/int64(len(line))); tot.Reports != want || tot.Malformed != 0 {
		t.Fatalf("fresh reader of trimmed file: %d reports (want %d), %d malformed", tot.Reports, want, tot.Malformed)
	}
}

func TestCollectHostileFiles(t *testing.T) {
	dir := t.TempDir()
	m, s := filepath.Join(dir, "metrics.json"), filepath.Join(dir, "metrics.state")
	w := newWriter(t, m)
	w.write(t, "garbage\n"+`{"utc_timestamp_ms":1,"g":{"c":1}}`+"\n"+strings.Repeat("x", MaxLine+10)+"\n"+`{"utc_timestamp_ms":2,"g":{"c":1}}`+"\n")
	tot := collect(t, m, s)
	if tot.Reports != 2 || tot.Counters["g.c"] != 2 || tot.Malformed < 2 {
		t.Fatalf("hostile lines: %+v", tot)
	}
	// A corrupt state file: totals restart from the file, with an error.
	os.WriteFile(s, []byte("{corrupt"), 0o600)
	tot, err := Collect(m, s)
	if !errors.Is(err, ErrMalformed) || tot.Reports != 2 {
		t.Fatalf("corrupt state: %d reports, err %v", tot.Reports, err)
	}
	if tot := collect(t, m, s); tot.Reports != 2 {
		t.Fatalf("state not repaired: %d", tot.Reports)
	}
	// A FIFO in place of the file is refused at once, not read.
	fifo := filepath.Join(dir, "fifo")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Collect(fifo, s+"2"); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Fatalf("fifo: %v", err)
	}
	// A symlink is not followed.
	link := filepath.Join(dir, "link")
	os.Symlink(m, link)
	if _, err := Collect(link, s+"3"); err == nil {
		t.Fatal("symlink followed")
	}
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if strings.Contains(e.Name(), ".tmp") {
			t.Errorf("temp file left: %s", e.Name())
		}
	}
}

func BenchmarkCollectIdle(b *testing.B) {
	dir := b.TempDir()
	m, s := filepath.Join(dir, "metrics.json"), filepath.Join(dir, "metrics.state")
	os.WriteFile(m, []byte(strings.Repeat(realLine(1, 1, 1, 1), 20)), 0o600)
	Collect(m, s)
	for b.Loop() {
		if _, err := Collect(m, s); err != nil {
			b.Fatal(err)
		}
	}
}
