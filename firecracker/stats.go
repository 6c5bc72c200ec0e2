package firecracker

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	microvm "github.com/mvm-dev/microvm"
	"github.com/mvm-dev/microvm/metrics"
)

// fileMetricsState keeps the VM's cumulative metrics (package metrics)
// next to metrics.json; fileMetricsState+".lock" serialises its readers.
const fileMetricsState = "metrics.state"

// userHZ is the unit of the CPU times in /proc/<pid>/stat: USER_HZ, 100
// on every Linux architecture regardless of the kernel's HZ.
const userHZ = 100

var _ microvm.StatsReader = (*Runtime)(nil)

// Stats returns what VM id uses: its firecracker's CPU time, resident
// memory and threads from /proc, its cgroup's counters when it has one,
// and, with Config.Metrics, firecracker's own counters totalled over the
// VM's life (package metrics: every flush, every process of the VM,
// every runtime that read them). With opts.Flush a running or paused VM
// is asked to flush its metrics first (FlushMetrics), so they are
// current; a VM that has not booted cannot flush, and is not asked.
//
// Stats takes no VM lock: it neither waits for nor delays an operation
// in flight. Metrics are off by default (Config.Metrics) because
// Firecracker's counters cost a request and a file per VM and most
// embedders never read them; host-side figures need nothing.
func (r *Runtime) Stats(ctx context.Context, id string, opts *microvm.StatsOptions) (microvm.VMStats, error) {
	if err := microvm.ValidateID(id); err != nil {
		return microvm.VMStats{}, err
	}
	if err := r.begin(); err != nil {
		return microvm.VMStats{}, err
	}
	defer r.end()
	if err := ctx.Err(); err != nil {
		return microvm.VMStats{}, err
	}
	rec, err := r.load(id)
	if err != nil {
		return microvm.VMStats{}, err
	}
	if rec, err = r.ensureAdopted(ctx, rec, false); err != nil {
		return microvm.VMStats{}, err
	}
	return r.statsOf(ctx, rec, opts), nil
}

// statsOf reads the figures of rec.
func (r *Runtime) statsOf(ctx context.Context, rec *vmRecord, opts *microvm.StatsOptions) microvm.VMStats {
	st := microvm.VMStats{ID: rec.ID, Status: rec.Status, Time: time.Now().UTC()}
	warn := func(format string, a ...any) { st.Warnings = append(st.Warnings, fmt.Sprintf(format, a...)) }
	if pr := rec.Process; pr != nil {
		ps, err := readProcessStats(pr.PID, pr.StartTime)
		if err != nil {
			warn("process %d: %v", pr.PID, err)
		} else {
			st.Process = &ps
		}
	}
	if cg := r.vmCgroup(rec); cg != (cgroupPaths{}) {
		cs, err := readCgroupStats(cg)
		if err != nil {
			warn("cgroup: %v", err)
		} else {
			st.Cgroup = &cs
		}
	}
	p := r.layout(rec)
	if r.cfg.Metrics && opts != nil && opts.Flush && rec.Process != nil &&
		(rec.Status == microvm.StatusRunning || rec.Status == microvm.StatusPaused) {
		if err := r.flushMetrics(ctx, rec); err != nil {
			warn("flush metrics: %v", err)
		}
	}
	tot, err := metrics.Collect(p.metrics, metricsState(p))
	if err != nil {
		warn("%v", err)
	}
	if r.cfg.Metrics || tot.Reports > 0 {
		st.Hypervisor = tot.Hypervisor()
	} else {
		warn("hypervisor metrics are off (firecracker.Config.Metrics)")
	}
	return st
}

// flushMetrics asks rec's firecracker to write its metrics now.
func (r *Runtime) flushMetrics(ctx context.Context, rec *vmRecord) error {
	c, err := r.client(rec, rec.Version)
	if err != nil {
		return err
	}
	defer c.Close()
	return c.FlushMetrics(ctx)
}

// forgetMetrics drops this process's cache of a metrics state file whose
// VM directory goes away (destroyed or renamed): a long-lived embedder
// would otherwise keep one entry for every VM it ever read stats of.
// A variable so tests can watch it.
var forgetMetrics = metrics.Forget

func metricsState(p vmPaths) string { return filepath.Join(p.dir, fileMetricsState) }

// relaunchMetrics is called before a new firecracker of the VM at p is
// given metrics.json: the previous process's unread reports are added to
// the totals and the file emptied for the new one (package metrics,
// Relaunch). A failure costs figures, not the launch: it is logged.
func (r *Runtime) relaunchMetrics(p vmPaths) {
	if _, err := metrics.Relaunch(p.metrics, metricsState(p)); err != nil {
		r.log.Warn("metrics: read the previous process's reports", "dir", p.dir, "err", err)
	}
}

// collectMetrics reads the VM's new reports into its totals; the trimmer
// calls it before cutting the head of metrics.json, so nothing is cut
// unread.
func (r *Runtime) collectMetrics(id string) {
	p := r.paths(id)
	if _, err := metrics.Collect(p.metrics, metricsState(p)); err != nil {
		r.log.Warn("metrics: collect", "vm", id, "err", err)
	}
}

// cgroupPaths names the cgroup directories that hold only a VM's
// processes: V2 on a cgroup v2 host, else the v1 controllers' directories
// (any may be empty).
type cgroupPaths struct {
	V2                   string
	CPUAcct, CPU, Memory string
}

// vmCgroup returns the cgroups of rec's processes, zero when the VM has
// none of its own. Hook for jailed VMs (the jailer makes them): unjailed
// VMs share mvm's cgroup, whose counters are not the VM's.
//
// A jailed VM's cgroup directories (recorded by the jailed launcher) are
// one v2 directory on a cgroup v2 host, else one per v1 controller, under
// the controllers' mount ("cpu,cpuacct", "memory", ...).
func (r *Runtime) vmCgroup(rec *vmRecord) cgroupPaths {
	var cg cgroupPaths
	if rec.Jail == nil {
		return cg
	}
	for _, d := range rec.Jail.Cgroups {
		if _, err := os.Stat(filepath.Join(d, "cgroup.controllers")); err == nil {
			cg.V2 = d // only a v2 directory has this file
			continue
		}
		rel, err := filepath.Rel(cgroupRoot, d)
		if err != nil || strings.HasPrefix(rel, "..") {
			continue
		}
		ctrl, _, _ := strings.Cut(rel, string(filepath.Separator))
		for _, c := range strings.Split(ctrl, ",") {
			switch c {
			case "cpuacct":
				cg.CPUAcct = d
			case "cpu":
				cg.CPU = d
			case "memory":
				cg.Memory = d
			}
		}
	}
	return cg
}

// readProcessStats reads /proc/<pid>/stat, checking that pid is still the
// process started at startTime.
func readProcessStats(pid int, startTime uint64) (microvm.ProcessStats, error) {
	f, err := procStatFields(pid, 24)
	if err != nil {
		return microvm.ProcessStats{}, err
	}
	num := func(n int) uint64 { v, _ := strconv.ParseUint(f[n-3], 10, 64); return v }
	if num(22) != startTime {
		return microvm.ProcessStats{}, fmt.Errorf("pid %d is another process now: %w", pid, fs.ErrNotExist)
	}
	if f[0] == "Z" || f[0] == "X" {
		return microvm.ProcessStats{}, fmt.Errorf("pid %d has exited: %w", pid, fs.ErrNotExist)
	}
	tick := time.Second / userHZ
	return microvm.ProcessStats{
		PID:        pid,
		UserTime:   time.Duration(num(14)) * tick,
		SystemTime: time.Duration(num(15)) * tick,
		Threads:    int(num(20)),
		RSSBytes:   num(24) * uint64(os.Getpagesize()),
	}, nil
}

// readCgroupStats reads a VM's cgroup counters: v2's cpu.stat,
// memory.current and memory.peak, or v1's cpuacct.usage(_user,_sys),
// cpu.stat's throttled_time, memory.usage_in_bytes and
// memory.max_usage_in_bytes. Files a hierarchy lacks (a v2 cgroup without
// the memory controller, memory.peak before Linux 5.19) leave their
// fields 0; a missing cgroup is an error.
func readCgroupStats(cg cgroupPaths) (microvm.CgroupStats, error) {
	read := func(dir, name string) (uint64, error) {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			return 0, err
		}
		return strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	}
	optional := func(dir, name string) uint64 {
		if dir == "" {
			return 0
		}
		v, _ := read(dir, name)
		return v
	}
	if cg.V2 != "" {
		cs := microvm.CgroupStats{Path: cg.V2}
		st, err := readKeyed(filepath.Join(cg.V2, "cpu.stat"))
		if err != nil {
			return cs, fmt.Errorf("cgroup %s: %w", cg.V2, err)
		}
		us := time.Microsecond
		cs.CPUUsage, cs.CPUUser = time.Duration(st["usage_usec"])*us, time.Duration(st["user_usec"])*us
		cs.CPUSystem, cs.CPUThrottled = time.Duration(st["system_usec"])*us, time.Duration(st["throttled_usec"])*us
		cs.MemoryCurrent = optional(cg.V2, "memory.current")
		cs.MemoryPeak = optional(cg.V2, "memory.peak")
		return cs, nil
	}
	cs := microvm.CgroupStats{Path: cg.CPUAcct}
	if cg.CPUAcct != "" {
		usage, err := read(cg.CPUAcct, "cpuacct.usage")
		if err != nil {
			return cs, fmt.Errorf("cgroup %s: %w", cg.CPUAcct, err)
		}
		cs.CPUUsage = time.Duration(usage)
		cs.CPUUser = time.Duration(optional(cg.CPUAcct, "cpuacct.usage_user"))
		cs.CPUSystem = time.Duration(optional(cg.CPUAcct, "cpuacct.usage_sys"))
	}
	if cg.CPU != "" {
		if st, err := readKeyed(filepath.Join(cg.CPU, "cpu.stat")); err == nil {
			cs.CPUThrottled = time.Duration(st["throttled_time"]) // ns in v1
		}
	}
	if cg.Memory != "" {
		if cs.Path == "" {
			cs.Path = cg.Memory
		}
		cur, err := read(cg.Memory, "memory.usage_in_bytes")
		if err != nil {
			return cs, fmt.Errorf("cgroup %s: %w", cg.Memory, err)
		}
		cs.MemoryCurrent = cur
		cs.MemoryPeak = optional(cg.Memory, "memory.max_usage_in_bytes")
	}
	return cs, nil
}

// readKeyed reads a "key value" per line file such as cpu.stat.
func readKeyed(path string) (map[string]uint64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	out := map[string]uint64{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), " ")
		if n, err := strconv.ParseUint(v, 10, 64); err == nil {
			out[k] = n
		}
	}
	return out, nil
}
