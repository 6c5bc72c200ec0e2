package server

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/mvm-dev/microvm/internal/fcstandin"
	"golang.org/x/sys/unix"
)

// Log levels, ordered like Rust's log crate.
const (
	lvlOff = iota
	lvlError
	lvlWarn
	lvlInfo
	lvlDebug
	lvlTrace
)

var levelNames = map[int]string{lvlError: "ERROR", lvlWarn: "WARN", lvlInfo: "INFO", lvlDebug: "DEBUG", lvlTrace: "TRACE"}

// parseLevel parses a level case-insensitively like Firecracker's
// LevelFilter (off, trace, debug, info, warn|warning, error).
func parseLevel(s string) (int, bool) {
	switch strings.ToLower(s) {
	case "off":
		return lvlOff, true
	case "trace":
		return lvlTrace, true
	case "debug":
		return lvlDebug, true
	case "info":
		return lvlInfo, true
	case "warn", "warning":
		return lvlWarn, true
	case "error":
		return lvlError, true
	}
	return 0, false
}

// logger writes Firecracker-format log lines; before a log path is set they
// go to stdout, like Firecracker's.
type logger struct {
	mu         sync.Mutex
	id         string
	level      int
	showLevel  bool
	showOrigin bool
	module     string
	target     *os.File // nil: stdout
	stdout     io.Writer
	stdoutMu   *sync.Mutex
	configured bool
	missed     func()
}

// openNonblockExisting opens path O_RDWR|O_NONBLOCK without creating it:
// Firecracker's logger and metrics refuse a missing file.
func openNonblockExisting(path string) (*os.File, error) {
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), path), nil
}

func (l *logger) log(level int, thread, origin, msg string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if level > l.level || level == lvlOff {
		return
	}
	if l.module != "" && !strings.HasPrefix(moduleOf(origin), l.module) {
		return
	}
	var b strings.Builder
	b.WriteString(time.Now().Format("2006-01-02T15:04:05.000000000"))
	fmt.Fprintf(&b, " [%s:%s", l.id, thread)
	if l.showLevel {
		b.WriteString(":" + levelNames[level])
	}
	if l.showOrigin {
		b.WriteString(":" + origin)
	}
	b.WriteString("] ")
	b.WriteString(msg)
	b.WriteString("\n")
	var err error
	if l.target != nil {
		_, err = l.target.Write([]byte(b.String()))
	} else {
		l.stdoutMu.Lock()
		_, err = io.WriteString(l.stdout, b.String())
		l.stdoutMu.Unlock()
	}
	if err != nil && l.missed != nil {
		l.missed()
	}
}

// moduleOf maps a fake source origin to a Rust module path for the module
// filter, e.g. "src/firecracker/src/api_server/mod.rs:1" -> "firecracker::api_server".
func moduleOf(origin string) string {
	o, _, _ := strings.Cut(origin, ":")
	o = strings.TrimPrefix(o, "src/")
	o = strings.TrimSuffix(o, ".rs")
	o = strings.TrimSuffix(o, "/mod")
	o = strings.Replace(o, "/src/", "/", 1)
	return strings.ReplaceAll(o, "/", "::")
}

// metrics keeps Firecracker-style counters (deltas between flushes) and
// store metrics (absolute), and writes one JSON line per flush.
type metrics struct {
	mu         sync.Mutex
	file       *os.File
	emitID     bool
	id         string
	properties map[string]string
	counters   map[string]map[string]uint64
	stores     map[string]map[string]uint64
}

// metricGroups lists every group Firecracker always emits with its fields.
var metricGroups = map[string][]string{
	"api_server":         {"process_startup_time_us", "process_startup_time_cpu_us", "sync_response_fails", "sync_vmm_send_timeout_count"},
	"balloon":            {"activate_fails", "inflate_count", "stats_updates_count", "stats_update_fails", "deflate_count", "event_fails"},
	"block":              {"activate_fails", "cfg_fails", "no_avail_buffer", "event_fails", "execute_fails", "invalid_reqs_count", "flush_count", "queue_event_count", "rate_limiter_event_count", "update_count", "update_fails", "read_bytes", "write_bytes", "read_count", "write_count", "rate_limiter_throttled_events", "io_engine_throttled_events"},
	"deprecated_api":     {"deprecated_http_api_calls", "deprecated_cmd_line_api_calls"},
	"entropy":            {"activate_fails", "entropy_event_fails", "entropy_event_count", "entropy_bytes", "host_rng_fails", "entropy_rate_limiter_throttled", "rate_limiter_event_count"},
	"get_api_requests":   {"instance_info_count", "machine_cfg_count", "mmds_count", "vmm_version_count", "hotplug_memory_count"},
	"i8042":              {"error_count", "missed_read_count", "missed_write_count", "read_count", "reset_count", "write_count"},
	"latencies_us":       {"full_create_snapshot", "diff_create_snapshot", "load_snapshot", "pause_vm", "resume_vm", "vmm_full_create_snapshot", "vmm_diff_create_snapshot", "vmm_load_snapshot", "vmm_pause_vm", "vmm_resume_vm"},
	"logger":             {"missed_metrics_count", "metrics_fails", "missed_log_count", "log_fails"},
	"mmds":               {"rx_accepted", "rx_accepted_err", "rx_accepted_unusual", "rx_bad_eth", "rx_invalid_token", "rx_no_token", "rx_count", "tx_bytes", "tx_count", "tx_errors", "tx_frames", "connections_created", "connections_destroyed"},
	"net":                {"activate_fails", "cfg_fails", "mac_address_updates", "no_rx_avail_buffer", "no_tx_avail_buffer", "event_fails", "rx_queue_event_count", "rx_event_rate_limiter_count", "rx_tap_event_count", "rx_bytes_count", "rx_packets_count", "rx_fails", "rx_count", "tap_read_fails", "tap_write_fails", "tx_bytes_count", "tx_malformed_frames", "tx_fails", "tx_count", "tx_packets_count", "tx_queue_event_count", "tx_rate_limiter_event_count"},
	"patch_api_requests": {"drive_count", "drive_fails", "network_count", "network_fails", "machine_cfg_count", "machine_cfg_fails", "mmds_count", "mmds_fails", "hotplug_memory_count", "hotplug_memory_fails"},
	"put_api_requests":   {"actions_count", "actions_fails", "boot_source_count", "boot_source_fails", "drive_count", "drive_fails", "logger_count", "logger_fails", "machine_cfg_count", "machine_cfg_fails", "cpu_cfg_count", "cpu_cfg_fails", "metrics_count", "metrics_fails", "network_count", "network_fails", "mmds_count", "mmds_fails", "vsock_count", "vsock_fails", "pmem_count", "pmem_fails", "serial_count", "serial_fails", "hotplug_memory_count", "hotplug_memory_fails"},
	"seccomp":            {"num_faults"},
	"signals":            {"sigbus", "sigsegv", "sigxfsz", "sigxcpu", "sigpipe", "sighup", "sigill"},
	"uart":               {"error_count", "flush_count", "missed_read_count", "missed_write_count", "read_count", "write_count", "rate_limiter_dropped_bytes"},
	"vcpu":               {"exit_io_in", "exit_io_out", "exit_mmio_read", "exit_mmio_write", "failures", "kvmclock_ctrl_fails"},
	"vmm":                {"device_events", "panic_count"},
	"vsock":              {"activate_fails", "cfg_fails", "rx_queue_event_fails", "tx_queue_event_fails", "ev_queue_event_fails", "muxer_event_fails", "conn_event_fails", "rx_queue_event_count", "tx_queue_event_count", "rx_bytes_count", "tx_bytes_count", "rx_packets_count", "tx_packets_count", "conns_added", "conns_killed", "conns_removed", "killq_resync", "tx_flush_fails", "tx_write_fails", "rx_read_fails"},
}

var storeMetrics = map[string]bool{"api_server": true, "latencies_us": true}

func newMetrics(id string) *metrics {
	return &metrics{id: id, counters: map[string]map[string]uint64{}, stores: map[string]map[string]uint64{}}
}

func (m *metrics) inc(group, name string, n uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	g := m.counters[group]
	if g == nil {
		g = map[string]uint64{}
		m.counters[group] = g
	}
	g[name] += n
}

func (m *metrics) store(group, name string, v uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	g := m.stores[group]
	if g == nil {
		g = map[string]uint64{}
		m.stores[group] = g
	}
	g[name] = v
}

func (m *metrics) configured() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.file != nil
}

// flush writes one metrics line; extraGroups adds per-device groups such as
// block_<id>. It reports whether a line was written.
func (m *metrics) flush(extraGroups []string) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.file == nil {
		return false, nil
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, `{"utc_timestamp_ms":%d`, time.Now().UnixMilli())
	if m.emitID {
		id, _ := json.Marshal(m.id)
		fmt.Fprintf(&b, `,"id":%s`, id)
	}
	if m.properties != nil {
		p, _ := json.Marshal(m.properties)
		fmt.Fprintf(&b, `,"properties":%s`, p)
	}
	groups := make([]string, 0, len(metricGroups)+len(extraGroups))
	fields := map[string][]string{}
	for g, f := range metricGroups {
		groups = append(groups, g)
		fields[g] = f
	}
	for _, g := range extraGroups {
		base := strings.SplitN(g, "_", 2)[0]
		if base == "block" || base == "net" {
			groups = append(groups, g)
			fields[g] = metricGroups[base]
		}
	}
	sort.Strings(groups)
	for _, g := range groups {
		fmt.Fprintf(&b, `,"%s":{`, g)
		for i, f := range fields[g] {
			if i > 0 {
				b.WriteByte(',')
			}
			v := m.counters[g][f]
			if storeMetrics[g] {
				v = m.stores[g][f]
			}
			fmt.Fprintf(&b, `"%s":%d`, f, v)
		}
		b.WriteByte('}')
	}
	b.WriteString("}\n")
	m.counters = map[string]map[string]uint64{}
	if _, err := m.file.Write(b.Bytes()); err != nil {
		m.counters["logger"] = map[string]uint64{"missed_metrics_count": 1}
		return false, err
	}
	return true, nil
}

// metricsPeriod is the interval of the periodic flush: Firecracker's 60 s,
// or FCSTANDIN_METRICS_PERIOD (a Go duration) for tests.
func metricsPeriod() time.Duration {
	if d, err := time.ParseDuration(os.Getenv("FCSTANDIN_METRICS_PERIOD")); err == nil && d > 0 {
		return d
	}
	return 60 * time.Second
}

// simulateGuestIO counts one flush period of guest I/O, in the aggregate
// group and the per-device one, as Firecracker does. The caller holds v.
func (v *vmm) simulateGuestIO() {
	for _, d := range v.cfg.Drives {
		for _, g := range []string{"block", "block_" + d.DriveID} {
			v.metrics.inc(g, "read_count", 1)
			v.metrics.inc(g, "read_bytes", fcstandin.GuestReadBytes)
			if d.IsReadOnly == nil || !*d.IsReadOnly {
				v.metrics.inc(g, "write_count", 1)
				v.metrics.inc(g, "write_bytes", fcstandin.GuestWriteBytes)
			}
		}
	}
	for _, n := range v.cfg.Nets {
		for _, g := range []string{"net", "net_" + n.IfaceID} {
			v.metrics.inc(g, "rx_packets_count", 1)
			v.metrics.inc(g, "rx_bytes_count", fcstandin.GuestRxBytes)
			v.metrics.inc(g, "tx_packets_count", 1)
			v.metrics.inc(g, "tx_bytes_count", fcstandin.GuestTxBytes)
		}
	}
}
