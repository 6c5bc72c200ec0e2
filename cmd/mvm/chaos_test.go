package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/mvm-dev/microvm/fcapi"
	"github.com/mvm-dev/microvm/internal/fcstandin"
	"github.com/mvm-dev/microvm/internal/realfc"
	"github.com/mvm-dev/microvm/network"
)

// The chaos test is an operator's bad day: each trial takes a fresh state
// directory, runs a few random mvm commands, then one more that is
// SIGKILLed at a random instant (sometimes a firecracker or mvm-uffd of
// the trial is SIGKILLed too), then a new mvm process must find the
// registry equal to reality and, after removing everything, nothing left.
//
//	MVM_CHAOS_SEED=N    the seed (logged by every run): the same seed gives
//	                    the same commands and kill points (the instant a
//	                    kill lands inside a command still depends on timing)
//	MVM_CHAOS_TRIALS=N  a long run of N trials: 60% with the stand-in
//	                    firecracker, 20% with the real v1.0/v1.7 builds,
//	                    20% with the stand-in and managed networking (root)
//	MVM_CHAOS_ONLY=K    run trial K (0-based) of the seed only
//
// Without MVM_CHAOS_TRIALS (CI) it runs 24 stand-in and 6 real-binary
// trials.
const (
	envChaosSeed   = "MVM_CHAOS_SEED"
	envChaosTrials = "MVM_CHAOS_TRIALS"
	envChaosOnly   = "MVM_CHAOS_ONLY"
)

// chaosKind is a family of trials.
type chaosKind struct {
	name string
	fc   string // firecracker binary
	real bool   // a real firecracker (it cannot boot without KVM: no start)
	net  bool   // managed networking in fresh namespaces
}

// chaosEnv is what every trial shares.
type chaosEnv struct {
	mvm     string
	env     []string
	kernel  string // a kernel for the real binaries
	uffdOK  bool   // userfaultfd works here (root)
	mu      sync.Mutex
	leaked  int // trials with violations
	midway  int // killed commands that had not finished
	viols   int
	byClass map[string]int
	took    map[string][]time.Duration // successful runs of each command
}

func TestChaos(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv(envChaosSeed); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("%s=%q: want a non-negative integer", envChaosSeed, s)
		}
		seed = v
	}
	standinN, realN, netN := 24, 6, 0
	if s := os.Getenv(envChaosTrials); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			t.Fatalf("%s=%q: want a positive integer", envChaosTrials, s)
		}
		realN, netN = n/5, n/5
		if os.Geteuid() != 0 {
			netN = 0
		}
		standinN = n - realN - netN
	}
	only := -1
	if s := os.Getenv(envChaosOnly); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v < 0 {
			t.Fatalf("%s=%q: want a trial number", envChaosOnly, s)
		}
		only = v
	}
	t.Logf("chaos seed %d (%s=%d reproduces it)", seed, envChaosSeed, seed)

	fc := fcstandin.Build(t)
	mvm := mvmBinary(t)
	ce := &chaosEnv{mvm: mvm, byClass: map[string]int{}, took: map[string][]time.Duration{}}
	ce.env = append(os.Environ(), "FCSTANDIN_SPEC_DIR="+fcstandin.SpecDir(t), "MVM_RUNTIME=", "MVM_STATE_DIR=",
		"MVM_EGRESS_IFACE=", "MVM_FIRECRACKER_BIN=")
	if os.Geteuid() == 0 {
		// mvm finds its page server beside itself.
		uffdBin := filepath.Join(filepath.Dir(mvm), "mvm-uffd")
		if out, err := exec.Command(goBin(), "build", "-o", uffdBin, "github.com/mvm-dev/microvm/cmd/mvm-uffd").CombinedOutput(); err != nil {
			t.Fatalf("go build mvm-uffd: %v\n%s", err, out)
		}
		ce.uffdOK = true
	}

	began := time.Now()
	next, total := 0, 0
	t.Cleanup(func() {
		t.Logf("chaos: %d trials in %s (%d commands killed before they finished), %d leaked or inconsistent (%d violations) %v; seed %d",
			total, time.Since(began).Round(time.Millisecond), ce.midway, ce.leaked, ce.viols, ce.byClass, seed)
	})
	// Each family is a subtest, so that missing real binaries skip (or,
	// with CI=true, fail) that family only; its trials run two at a time.
	family := func(name string, n int, kinds func(t *testing.T) []chaosKind) {
		first := next
		next += n
		if n == 0 || (only >= 0 && (only < first || only >= first+n)) {
			return
		}
		t.Run(name, func(t *testing.T) {
			ks := kinds(t)
			for i := range n {
				num, kind := first+i, ks[i%len(ks)]
				if only >= 0 && num != only {
					continue
				}
				total++
				t.Run(fmt.Sprintf("%s-%d", kind.name, num), func(t *testing.T) {
					t.Parallel() // two at a time by default (GOMAXPROCS)
					tr := &trial{chaosEnv: ce, kind: kind, n: num, seed: seed, rng: rand.New(rand.NewPCG(seed, uint64(num)))}
					tr.run(t)
				})
			}
		})
	}
	family("standin", standinN, func(*testing.T) []chaosKind {
		return []chaosKind{{name: "standin", fc: fc}}
	})
	family("real", realN, func(t *testing.T) []chaosKind {
		var ks []chaosKind
		for _, b := range realfc.Binaries(t) {
			if strings.HasPrefix(b.Version, "1.0.") || strings.HasPrefix(b.Version, "1.7.") {
				ks = append(ks, chaosKind{name: b.Name(), fc: b.Path, real: true})
			}
		}
		if len(ks) == 0 {
			for _, b := range realfc.Ends(t) {
				ks = append(ks, chaosKind{name: b.Name(), fc: b.Path, real: true})
			}
		}
		ce.kernel = realfc.Kernel(t)
		return ks
	})
	family("net", netN, func(*testing.T) []chaosKind {
		return []chaosKind{{name: "net", fc: fc, net: true}}
	})
	if only >= next {
		t.Fatalf("%s=%d: this run has trials 0 to %d (%s decides how many)", envChaosOnly, only, next-1, envChaosTrials)
	}
}

func goBin() string {
	gobin := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(gobin); err != nil {
		return "go"
	}
	return gobin
}

// trial is one chaos trial.
type trial struct {
	*chaosEnv
	kind    chaosKind
	n       int
	seed    uint64
	rng     *rand.Rand
	state   string
	dir     string // images
	runDir  string // namespaces (net)
	hostNS  int    // the trial's host namespace (net), else -1
	netArgs []string
	history []string
	viols   []string
}

func (tr *trial) logf(format string, args ...any) {
	tr.history = append(tr.history, fmt.Sprintf(format, args...))
}

// violation records a way the trial's state differs from what it must be,
// with its class (for the run's summary).
func (tr *trial) violation(class, format string, args ...any) {
	tr.viols = append(tr.viols, class+": "+fmt.Sprintf(format, args...))
	tr.mu.Lock()
	tr.byClass[class]++
	tr.mu.Unlock()
}

func (tr *trial) run(t *testing.T) {
	tmp := t.TempDir()
	tr.state, tr.dir, tr.hostNS = filepath.Join(tmp, "state"), filepath.Join(tmp, "img"), -1
	if err := os.Mkdir(tr.dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if tr.kind.real {
		if err := os.Symlink(tr.kernel, filepath.Join(tr.dir, "vmlinux")); err != nil {
			t.Fatal(err)
		}
	} else if err := os.WriteFile(filepath.Join(tr.dir, "vmlinux"), []byte("\x7fELF stand-in kernel"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, vm := range chaosVMs {
		if err := os.WriteFile(tr.rootfs(vm), make([]byte, 1<<20), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if tr.kind.net {
		tr.hostNS = newNetNS(t)
		wireUplink(t, tr.hostNS, newNetNS(t))
		tr.runDir = filepath.Join(tmp, "run")
		tr.netArgs = []string{"--egress-iface", "uplink", "--net-run-dir", tr.runDir}
		t.Cleanup(func() {
			if ok, _ := isMountPoint(tr.runDir); ok {
				unix.Unmount(tr.runDir, unix.MNT_DETACH)
			}
		})
	}
	// Whatever a failed trial leaves running is killed.
	t.Cleanup(func() {
		for pid := range procsIn(tr.state) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	})

	var setup [][]string
	if !tr.kind.real && tr.rng.IntN(3) == 0 {
		// A running VM with a snapshot: restores and their page servers
		// get killed too.
		setup = [][]string{
			{"create", "a", "--kernel", filepath.Join(tr.dir, "vmlinux"), "--rootfs", tr.rootfs("a"), "--memory", "32", "--start"},
			{"snapshot", "a", "s1"},
		}
		if tr.kind.net {
			setup[0] = append(setup[0], "--net")
		}
	}
	for _, args := range setup {
		code, _, errs := tr.mvmRun(t, args)
		tr.logf("mvm %s -> %d %s", strings.Join(args, " "), code, firstLine(errs))
	}
	for range 2 + tr.rng.IntN(4) - len(setup) {
		args := tr.randomOp()
		if tr.rng.IntN(4) != 0 {
			args = tr.validOp(t)
		}
		code, _, errs := tr.mvmRun(t, args)
		tr.logf("mvm %s -> %d %s", strings.Join(args, " "), code, firstLine(errs))
	}
	tr.killOne(t)
	tr.checkConsistent(t)
	tr.removeAll(t)
	tr.checkEmpty(t)
	if testing.Verbose() {
		t.Logf("history:\n  %s", strings.Join(tr.history, "\n  "))
	}
	if len(tr.viols) > 0 {
		tr.mu.Lock()
		tr.leaked++
		tr.chaosEnv.viols += len(tr.viols)
		tr.mu.Unlock()
		t.Errorf("trial %d (replay: %s=%d %s=%s %s=%d):\n  %s\nhistory:\n  %s", tr.n, envChaosSeed, tr.seed,
			envChaosTrials, os.Getenv(envChaosTrials), envChaosOnly, tr.n,
			strings.Join(tr.viols, "\n  "), strings.Join(tr.history, "\n  "))
	}
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(strings.TrimSpace(s), "\n")
	return s
}

var (
	chaosVMs   = []string{"a", "b", "c"}
	chaosSnaps = []string{"s1", "s2"}
)

func (tr *trial) rootfs(vm string) string { return filepath.Join(tr.dir, "rootfs-"+vm+".ext4") }

func (tr *trial) pick(names []string) string {
	if tr.rng.IntN(20) == 0 {
		return "typo" // an id that never exists
	}
	return names[tr.rng.IntN(len(names))]
}

// randomOp returns the arguments of a random mvm command of the trial's
// kind.
func (tr *trial) randomOp() []string {
	vm := tr.pick(chaosVMs)
	type op struct {
		weight int
		args   func() []string
	}
	create := func() []string {
		a := []string{"create", vm, "--kernel", filepath.Join(tr.dir, "vmlinux"), "--rootfs", tr.rootfs(vm), "--memory", "32"}
		if tr.kind.net {
			a = append(a, "--net")
		}
		if !tr.kind.real && tr.rng.IntN(2) == 0 {
			a = append(a, "--start")
		}
		return a
	}
	ops := []op{
		{6, create},
		{3, func() []string { return []string{"rm", vm} }},
		{1, func() []string { return []string{"inspect", vm} }},
		{1, func() []string { return []string{"ls"} }},
	}
	if tr.kind.real {
		// Without KVM a real firecracker cannot boot: start fails (and
		// is an operation to kill too); with KVM it would boot a kernel
		// without a root file system, which is the KVM suite's business.
		if !realfc.KVM() {
			ops = append(ops, op{2, func() []string { return []string{"start", vm} }})
		}
	} else {
		ops = append(ops,
			op{4, func() []string { return []string{"start", vm} }},
			op{2, func() []string { return []string{"stop", vm} }},
			op{2, func() []string { return []string{"pause", vm} }},
			op{2, func() []string { return []string{"resume", vm} }},
			op{3, func() []string { return []string{"snapshot", vm, tr.pick(chaosSnaps)} }},
			op{3, func() []string {
				a := []string{"restore", tr.pick(chaosSnaps), vm}
				if tr.rng.IntN(3) == 0 {
					a = append(a, "--paused")
				}
				if tr.uffdOK && tr.rng.IntN(2) == 0 {
					a = append(a, "--mem-backend", "uffd")
				}
				return a
			}},
			op{1, func() []string { return []string{"rm-snapshot", tr.pick(chaosSnaps)} }},
		)
	}
	total := 0
	for _, o := range ops {
		total += o.weight
	}
	w := tr.rng.IntN(total)
	for _, o := range ops {
		if w < o.weight {
			return o.args()
		}
		w -= o.weight
	}
	panic("unreachable")
}

// validOp returns a command that the records say can succeed now (a
// random one when none can): the ones worth interrupting.
func (tr *trial) validOp(t *testing.T) []string {
	recs := tr.records(t)
	var snaps []string
	ents, _ := os.ReadDir(filepath.Join(tr.state, "snapshots"))
	for _, e := range ents {
		if !strings.HasPrefix(e.Name(), ".") {
			snaps = append(snaps, e.Name())
		}
	}
	var cands [][]string
	for _, vm := range chaosVMs {
		rec, ok := recs[vm]
		if !ok {
			a := []string{"create", vm, "--kernel", filepath.Join(tr.dir, "vmlinux"), "--rootfs", tr.rootfs(vm), "--memory", "32"}
			if tr.kind.net {
				a = append(a, "--net")
			}
			cands = append(cands, a)
			if !tr.kind.real {
				cands = append(cands, append(slices.Clone(a), "--start"))
				for _, s := range snaps {
					cands = append(cands, []string{"restore", s, vm})
					if tr.uffdOK {
						cands = append(cands, []string{"restore", s, vm, "--mem-backend", "uffd"})
					}
				}
			}
			continue
		}
		cands = append(cands, []string{"rm", vm})
		switch {
		case tr.kind.real:
			if rec.Status == "created" && !realfc.KVM() {
				cands = append(cands, []string{"start", vm})
			}
		case rec.Status == "created" || rec.Status == "stopped" || rec.Status == "failed":
			cands = append(cands, []string{"start", vm})
		case rec.Status == "running" || rec.Status == "paused":
			op := "pause"
			if rec.Status == "paused" {
				op = "resume"
			}
			cands = append(cands, []string{"stop", vm}, []string{op, vm}, []string{"snapshot", vm, tr.pick(chaosSnaps)})
		}
	}
	for _, s := range snaps {
		cands = append(cands, []string{"rm-snapshot", s})
	}
	if len(cands) == 0 {
		return tr.randomOp()
	}
	// A verb first, then one of its commands: restores and snapshots get
	// their share beside the many creates of an empty state.
	var verbs []string
	for _, c := range cands {
		if !slices.Contains(verbs, c[0]) {
			// The commands with the most steps count more.
			for range map[string]int{"restore": 3, "snapshot": 2, "start": 2}[c[0]] + 1 {
				verbs = append(verbs, c[0])
			}
		}
	}
	verb := verbs[tr.rng.IntN(len(verbs))]
	cands = slices.DeleteFunc(cands, func(c []string) bool { return c[0] != verb })
	return cands[tr.rng.IntN(len(cands))]
}

// mvmCmd returns the command of one mvm invocation on the trial's state.
func (tr *trial) mvmCmd(args []string) *exec.Cmd {
	full := append([]string{"--state-dir", tr.state, "--firecracker-bin", tr.kind.fc}, tr.netArgs...)
	cmd := exec.Command(tr.mvm, append(full, args...)...)
	cmd.Env = tr.env
	return cmd
}

func (tr *trial) start(t *testing.T, cmd *exec.Cmd) {
	t.Helper()
	var err error
	if tr.hostNS >= 0 {
		err = startIn(tr.hostNS, cmd)
	} else {
		err = cmd.Start()
	}
	if err != nil {
		t.Fatalf("start mvm: %v", err)
	}
}

// commandTimeout bounds one mvm command: longer is a hang.
const commandTimeout = 60 * time.Second

// mvmRun runs mvm to completion. An exit status other than 0, 1 and 2,
// or a command that hangs, is a violation.
func (tr *trial) mvmRun(t *testing.T, args []string) (int, string, string) {
	t.Helper()
	cmd := tr.mvmCmd(args)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	began := time.Now()
	tr.start(t, cmd)
	timer := time.AfterFunc(commandTimeout, func() { cmd.Process.Kill() })
	err := cmd.Wait()
	took := time.Since(began)
	if !timer.Stop() {
		tr.violation("hang", "mvm %s did not finish within %s", strings.Join(args, " "), commandTimeout)
	}
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("mvm %s: %v", strings.Join(args, " "), err)
	}
	if code < 0 || code > 2 {
		tr.violation("exit-status", "mvm %s exited %d (%s): %s", strings.Join(args, " "), code, ee, firstLine(errb.String()))
	}
	if code == 0 {
		tr.mu.Lock()
		tr.took[args[0]] = append(tr.took[args[0]], took)
		tr.mu.Unlock()
	}
	if strings.Contains(errb.String(), "panic:") || strings.Contains(errb.String(), "goroutine ") {
		tr.violation("panic", "mvm %s: %s", strings.Join(args, " "), errb.String())
	}
	return code, out.String(), errb.String()
}

// killOne runs one more command and SIGKILLs it at a random instant;
// in a third of the trials a firecracker or page server of the trial is
// SIGKILLed too, before or after.
func (tr *trial) killOne(t *testing.T) {
	args := tr.validOp(t)
	// A random instant within the median successful run of that command
	// (a little past it sometimes): the fraction is the seed's, the span
	// this machine's.
	frac := 1.2 * tr.rng.Float64()
	span := 100 * time.Millisecond
	tr.mu.Lock()
	if runs := tr.took[args[0]]; len(runs) > 0 {
		sorted := slices.Sorted(slices.Values(runs))
		span = sorted[len(sorted)/2]
	}
	tr.mu.Unlock()
	delay := time.Duration(frac * float64(span))
	alsoVM, vmFirst := tr.rng.IntN(3) == 0, tr.rng.IntN(2) == 0
	vmDelay := time.Duration(tr.rng.Int64N(int64(delay) + 1))
	pickProc := tr.rng.IntN(1 << 20)
	cmd := tr.mvmCmd(args)
	tr.start(t, cmd)
	var killed []int
	killVM := func() {
		pids := slices.Sorted(func(yield func(int) bool) {
			for pid := range procsIn(tr.state) {
				if pid != cmd.Process.Pid && !yield(pid) {
					return
				}
			}
		})
		if len(pids) == 0 {
			tr.logf("  (no firecracker or page server to kill)")
			return
		}
		pid := pids[pickProc%len(pids)]
		name := procName(pid)
		syscall.Kill(pid, syscall.SIGKILL)
		tr.logf("  SIGKILL %s (pid %d)", name, pid)
		killed = append(killed, pid)
	}
	if alsoVM && vmFirst {
		time.Sleep(vmDelay)
		killVM()
		time.Sleep(delay - vmDelay)
	} else {
		time.Sleep(delay)
	}
	cmd.Process.Kill()
	err := cmd.Wait()
	if alsoVM && !vmFirst {
		time.Sleep(vmDelay)
		killVM()
	}
	// A child mvm forked and had not yet exec'd when it was killed still
	// runs mvm's command line and holds copies of its descriptors (its
	// locks among them) until it execs, which a busy host can delay: the
	// command is over once those are gone.
	self := []byte(strings.Join(cmd.Args, "\x00") + "\x00")
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		left := 0
		for pid := range procsIn(tr.state) {
			if b, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline"); bytes.Equal(b, self) {
				left++
			}
		}
		if left == 0 {
			break
		}
		if time.Now().After(deadline) {
			tr.violation("process", "a child of the killed mvm still runs its command line 10s later")
			break
		}
	}
	// A process killed is dead only once it has run its exit (which a
	// busy host can delay): until then a new mvm rightly sees it alive.
	for _, pid := range killed {
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
			if _, ok := procStart(pid); !ok {
				break
			}
			if time.Now().After(deadline) {
				tr.violation("process", "pid %d still alive 10s after SIGKILL", pid)
				break
			}
		}
	}
	how := "finished first"
	if ee, ok := err.(*exec.ExitError); ok && !ee.Exited() {
		how = "killed"
		tr.mu.Lock()
		tr.midway++
		tr.mu.Unlock()
	}
	tr.logf("mvm %s SIGKILLed after %s (%s)", strings.Join(args, " "), delay, how)
}

func procName(pid int) string {
	b, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/comm")
	return strings.TrimSpace(string(b))
}

// procsIn returns the live processes (zombies are dead) whose working
// directory is in dir or whose command line names it.
func procsIn(dir string) map[int]uint64 {
	out := map[int]uint64{}
	if dir == "" {
		return out
	}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		st, ok := procStart(pid)
		if !ok {
			continue
		}
		cmd, _ := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		cwd, _ := os.Readlink("/proc/" + e.Name() + "/cwd")
		if bytes.Contains(cmd, []byte(dir)) || cwd == dir || strings.HasPrefix(cwd, dir+"/") {
			out[pid] = st
		}
	}
	return out
}

// procStart returns a live process's start time (field 22 of stat); false
// for a zombie or a process that is gone.
func procStart(pid int) (uint64, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, false
	}
	i := bytes.LastIndexByte(b, ')')
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 || f[0] == "Z" || f[0] == "X" {
		return 0, false
	}
	v, err := strconv.ParseUint(f[22-3], 10, 64)
	return v, err == nil
}

// chaosRecord is what the check reads of a VM record (registry/vm/<id>.json).
type chaosRecord struct {
	ID      string `json:"id"`
	Status  string `json:"status"`
	Op      string `json:"op"`
	Process *struct {
		PID       int    `json:"pid"`
		StartTime uint64 `json:"start_time"`
	} `json:"process"`
	Uffd *struct {
		PID       int    `json:"pid"`
		StartTime uint64 `json:"start_time"`
	} `json:"uffd"`
}

func (tr *trial) records(t *testing.T) map[string]chaosRecord {
	recs := map[string]chaosRecord{}
	dir := filepath.Join(tr.state, "registry", "vm")
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return recs
	}
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		id, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			tr.violation("record", "%s: %v", e.Name(), err)
			continue
		}
		var env struct {
			Data chaosRecord `json:"data"`
		}
		if err := json.Unmarshal(b, &env); err != nil {
			tr.violation("record", "%s: %v", e.Name(), err)
			continue
		}
		recs[id] = env.Data
	}
	return recs
}

var fcStateOf = map[string]fcapi.InstanceState{
	"created": fcapi.StateNotStarted,
	"running": fcapi.StateRunning,
	"paused":  fcapi.StatePaused,
}

// checkConsistent runs a new mvm (whose Open and List recover what the
// killed one left) and checks the registry against reality.
func (tr *trial) checkConsistent(t *testing.T) {
	if code, _, errs := tr.mvmRun(t, []string{"ls", "-o", "json"}); code != 0 {
		tr.violation("ls", "mvm ls after the kill: exit %d: %s", code, firstLine(errs))
	}
	recs := tr.records(t)
	owned := map[int]uint64{}
	for id, rec := range recs {
		if rec.Op != "" {
			tr.violation("record", "vm %s: still marked mid-%s after recovery", id, rec.Op)
		}
		if rec.Process != nil {
			owned[rec.Process.PID] = rec.Process.StartTime
		}
		if rec.Uffd != nil {
			owned[rec.Uffd.PID] = rec.Uffd.StartTime
		}
		live := false
		if rec.Process != nil {
			st, ok := procStart(rec.Process.PID)
			live = ok && st == rec.Process.StartTime
		}
		want, booted := fcStateOf[rec.Status]
		switch {
		case rec.Status == "running" || rec.Status == "paused":
			if !live {
				tr.violation("registry", "vm %s: %s with no live process (record pid %v)", id, rec.Status, rec.Process)
				continue
			}
		case rec.Status == "stopped" || rec.Status == "failed":
			if rec.Process != nil {
				tr.violation("registry", "vm %s: %s but the record names process %d (alive %v)", id, rec.Status, rec.Process.PID, live)
			}
			continue
		case rec.Status == "created":
			if !live {
				if rec.Process != nil {
					tr.violation("registry", "vm %s: created, recorded process %d is dead", id, rec.Process.PID)
				}
				continue
			}
		default:
			tr.violation("registry", "vm %s: status %q", id, rec.Status)
			continue
		}
		if booted {
			got, err := apiState(filepath.Join(tr.state, "vms", id, "api.sock"))
			if err != nil {
				tr.violation("registry", "vm %s (%s): GET /: %v", id, rec.Status, err)
			} else if got != want {
				tr.violation("registry", "vm %s: the record says %s, firecracker says %q", id, rec.Status, got)
			}
		}
	}
	for pid, st := range procsIn(tr.state) {
		if ost, ok := owned[pid]; !ok || ost != st {
			tr.violation("process", "%s (pid %d) runs for the state directory and no record names it: %s", procName(pid), pid, cmdline(pid))
		}
	}
	ents, _ := os.ReadDir(filepath.Join(tr.state, "vms"))
	for _, e := range ents {
		if _, ok := recs[e.Name()]; !ok {
			tr.violation("folder", "vms/%s has no record", e.Name())
		}
	}
	tr.checkFiles(recs, owned)
}

func cmdline(pid int) string {
	b, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	return strings.ReplaceAll(strings.TrimRight(string(b), "\x00"), "\x00", " ")
}

// apiState asks a firecracker its state (GET /).
func apiState(sock string) (fcapi.InstanceState, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c := fcapi.New(sock, nil)
	defer c.Close()
	info, err := c.InstanceInfo(ctx)
	return info.State, err
}

// checkFiles walks the state directory for what nothing explains:
// temporary files, sockets of VMs without a live process, lock files,
// half-made or half-deleted snapshots.
func (tr *trial) checkFiles(recs map[string]chaosRecord, owned map[int]uint64) {
	liveVM := map[string]bool{}
	for id, rec := range recs {
		if rec.Process != nil {
			if st, ok := procStart(rec.Process.PID); ok && st == rec.Process.StartTime {
				liveVM[id] = true
			}
		}
	}
	filepath.WalkDir(tr.state, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		rel, _ := filepath.Rel(tr.state, path)
		name := d.Name()
		parts := strings.Split(rel, string(filepath.Separator))
		switch {
		case strings.HasPrefix(name, ".tmp-") || strings.Contains(name, ".tmp-"):
			class := "temp-file"
			if parts[0] == "network" {
				class = "network-temp-file" // package network's
			}
			tr.violation(class, "%s left", rel)
		case d.Type()&fs.ModeSocket != 0:
			if len(parts) < 2 || parts[0] != "vms" || !liveVM[parts[1]] {
				tr.violation("socket", "%s left without a live process", rel)
			}
		case len(parts) == 3 && parts[1] == "locks" && name != "table":
			if id, ok := strings.CutPrefix(strings.TrimSuffix(name, ".lock"), "vm-"); !ok || recs[id].ID == "" {
				tr.violation("lock-file", "%s", rel)
			}
		case len(parts) == 2 && parts[0] == "snapshots" && strings.HasPrefix(name, ".") && name != ".lock":
			tr.violation("snapshot", "%s left", rel)
		}
		return nil
	})
}

// removeAll removes every VM and snapshot with mvm; each must succeed.
func (tr *trial) removeAll(t *testing.T) {
	for id := range tr.records(t) {
		if code, _, errs := tr.mvmRun(t, []string{"rm", id}); code != 0 {
			tr.violation("rm", "mvm rm %s: exit %d: %s", id, code, firstLine(errs))
		}
	}
	ents, _ := os.ReadDir(filepath.Join(tr.state, "snapshots"))
	for _, e := range ents {
		if !strings.HasPrefix(e.Name(), ".") {
			if code, _, errs := tr.mvmRun(t, []string{"rm-snapshot", e.Name()}); code != 0 {
				tr.violation("rm", "mvm rm-snapshot %s: exit %d: %s", e.Name(), code, firstLine(errs))
			}
		}
	}
}

// checkEmpty checks that nothing is left once everything was removed.
func (tr *trial) checkEmpty(t *testing.T) {
	// A SIGKILLed process is gone once its pidfd says so; mvm rm waits
	// for that, so nothing should still be dying here.
	for pid := range procsIn(tr.state) {
		tr.violation("process", "%s (pid %d) still runs after everything was removed: %s", procName(pid), pid, cmdline(pid))
	}
	for _, d := range []string{"vms", "registry/vm"} {
		ents, _ := os.ReadDir(filepath.Join(tr.state, d))
		for _, e := range ents {
			tr.violation("folder", "%s/%s left after everything was removed", d, e.Name())
		}
	}
	ents, _ := os.ReadDir(filepath.Join(tr.state, "snapshots"))
	for _, e := range ents {
		if e.Name() != ".lock" {
			tr.violation("snapshot", "snapshots/%s left after everything was removed", e.Name())
		}
	}
	tr.checkFiles(nil, nil)
	if !tr.kind.net {
		return
	}
	if ents, _ := os.ReadDir(tr.runDir); len(ents) > 0 {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		tr.violation("netns", "namespaces left in the run directory: %v", names)
	}
	withHandle(t, tr.hostNS, func(h *netlink.Handle) {
		ls, _ := h.LinkList()
		for _, l := range ls {
			if strings.HasPrefix(l.Attrs().Name, network.DefaultNamePrefix) {
				tr.violation("link", "link %s left in the host namespace", l.Attrs().Name)
			}
		}
	})
	c, err := nftables.New(nftables.WithNetNSFd(tr.hostNS))
	if err != nil {
		t.Fatal(err)
	}
	if ts, err := c.ListTables(); err != nil || len(ts) > 0 {
		var names []string
		for _, tb := range ts {
			names = append(names, tb.Name)
		}
		tr.violation("nftables", "tables left in the host namespace: %v %v", names, err)
	}
	for _, kind := range []string{"netlease", "netvm"} {
		ents, _ := os.ReadDir(filepath.Join(tr.state, "network", kind))
		for _, e := range ents {
			if !strings.HasPrefix(e.Name(), ".tmp-") { // reported by checkFiles
				tr.violation("network-record", "network/%s/%s left", kind, e.Name())
			}
		}
	}
}
