package firecracker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	microvm "github.com/mvm-dev/microvm"
	"github.com/mvm-dev/microvm/image/store"
	"github.com/mvm-dev/microvm/internal/registry"
	"github.com/mvm-dev/microvm/internal/snapshot"
)

// Defaults of Config.
const (
	// DefaultReadyTimeout bounds the wait for a new firecracker's API
	// socket to answer (firecracker itself needs 6-60 ms).
	DefaultReadyTimeout = 5 * time.Second
	// DefaultAPITimeout bounds each API call.
	DefaultAPITimeout = 5 * time.Second
	// DefaultSnapshotTimeout bounds snapshot create and load calls, which
	// write or map all guest memory.
	DefaultSnapshotTimeout = 2 * time.Minute
	// DefaultConsoleMaxBytes bounds each of console.log, firecracker.log
	// and metrics.json.
	DefaultConsoleMaxBytes = 2 << 20
)

// Fixed timings of process supervision.
const (
	// termGrace is how long Stop waits after SIGTERM before SIGKILL.
	termGrace = 2 * time.Second
	// killWait bounds the wait for a process to exit after SIGKILL.
	killWait = 5 * time.Second
	// trimInterval is how often an open runtime bounds the output files
	// of the VMs it watches.
	trimInterval = 5 * time.Second
	// probeTimeout bounds the API probe of a live VM being adopted.
	probeTimeout = time.Second
	// openWorkers bounds the VMs AdoptAll reconciles at once.
	openWorkers = 8
	// listWorkers bounds the records List reads at once.
	listWorkers = 4
)

// Config configures a Runtime. Only StateDir is required; zero values take
// the documented defaults, negative durations are refused.
type Config struct {
	// StateDir holds all of the runtime's state (see the package
	// documentation for its layout). It is created (mode 0700) if missing.
	// Several runtimes, in one or many processes, may share it.
	StateDir string
	// Images is the image store of drives that name an image
	// (microvm.Drive.Image). Default: the store in <StateDir>/images
	// (the one `mvm image` manages), opened (created if missing) by Open.
	Images *store.Store
	// FirecrackerBin is the firecracker binary: a path, or a name looked
	// up in PATH. Default "firecracker". Open checks that it exists, is a
	// regular file and is executable. It must exec the VMM in place (a
	// wrapper script must end in `exec`), since the runtime supervises
	// the process it starts. It is the binary of the VMs this Runtime
	// creates or restores: each VM's record keeps its binary, and every
	// later process of the VM runs that one (VM.Backend.Binary).
	FirecrackerBin string
	// ReadyTimeout bounds the wait for a new process's API socket.
	// Default DefaultReadyTimeout.
	ReadyTimeout time.Duration
	// APITimeout bounds each API call. Default DefaultAPITimeout.
	APITimeout time.Duration
	// SnapshotTimeout bounds snapshot create and load. Default
	// DefaultSnapshotTimeout.
	SnapshotTimeout time.Duration
	// StopTimeout is how long Stop waits for the guest to shut down when
	// StopOptions.Timeout is 0. Default microvm.DefaultStopTimeout.
	StopTimeout time.Duration
	// ConsoleMaxBytes bounds each output file of a VM (console.log,
	// firecracker.log, metrics.json): past it, the oldest half is dropped.
	// Default DefaultConsoleMaxBytes; negative means unbounded.
	ConsoleMaxBytes int64
	// DefaultMemoryBackend is the memory backend of a Restore that does
	// not choose one. Default microvm.MemoryBackendFile.
	DefaultMemoryBackend microvm.MemoryBackend
	// UffdBin is the uffd page server binary (cmd/mvm-uffd), used by
	// restores with the uffd backend. Default: uffd.FindBinary.
	UffdBin string
	// Network sets up managed network interfaces (NetworkInterface with an
	// empty HostDevName); package network/fcnet provides one. Nil refuses
	// them with ErrNoNetwork (and microvm.ErrUnsupported); unmanaged
	// interfaces (existing TAP devices) need nothing. The runtime does not
	// close it.
	Network Network
	// Metrics makes each firecracker write its metrics to metrics.json in
	// the VM directory (PUT /metrics); Stats then reports them, totalled
	// over the VM's life. Default false: it costs a request and a file per
	// VM, and host-side statistics (CPU, memory) need nothing.
	Metrics bool
	// Env is the environment of the firecracker processes, as KEY=VALUE
	// strings. Default: only PATH (/usr/local/sbin:/usr/local/bin:
	// /usr/sbin:/usr/bin:/sbin:/bin). The embedder's own environment is
	// never passed on: firecracker needs none of it, and it may hold
	// credentials.
	Env []string
	// Logger receives the runtime's diagnostics. Default: discarded.
	Logger *slog.Logger
	// Jailer, when not nil, runs every VM's firecracker through
	// Firecracker's jailer (see JailerConfig); nil runs it directly, as
	// the runtime's user. VMs of one state directory should all be
	// opened in the same mode: a VM keeps the mode of its current
	// process, and a runtime without a jailer still releases what a
	// jailed VM holds.
	Jailer *JailerConfig
}

// defaultEnv is the environment of firecracker processes when Config.Env
// is empty.
var defaultEnv = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}

// Runtime is a microvm.Runtime that runs each VM in its own firecracker
// process. It is safe for concurrent use, and several Runtimes (in one or
// many processes) may share a state directory: per-VM locks on disk
// serialise operations on one VM, and each Runtime adopts the VMs the
// others started.
type Runtime struct {
	cfg      Config
	bin      string // absolute path of the firecracker binary
	launcher launcher
	state    string // absolute StateDir
	vmsDir   string
	reg      *registry.Registry
	snaps    *snapshot.Store
	images   *store.Store
	log      *slog.Logger

	ctx    context.Context // ends at Close; bounds background work
	cancel context.CancelFunc
	ops    sync.WaitGroup // operations in flight
	bg     sync.WaitGroup // watchers and the trimmer

	mu       sync.Mutex
	closed   bool
	watchers map[string]*watcher // by VM id
	exits    map[procRecord]exitInfo

	dirWatchOnce sync.Once
	dirWatch     *dirWatch // nil until first needed, or without inotify

	// lastVersion is the version the binary reported at the last launch
	// that probed it: later launches of the unchanged file skip the probe,
	// and Create writes its record while the process starts.
	lastVersion atomic.Pointer[binVersion]
}

var _ microvm.Runtime = (*Runtime)(nil)

// Open opens the runtime over cfg.StateDir. It adopts no VM (adoption is
// lazy: each VM is reconciled with the host when this runtime first meets
// it, see the package documentation), and only removes what no record
// explains: directories of interrupted Creates (ending their processes)
// and of interrupted Destroys. ctx bounds Open only.
func Open(ctx context.Context, cfg Config) (*Runtime, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("firecracker: open: %w", err)
	}
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("firecracker: open: %w", err)
	}
	bin, err := findBinary("firecracker binary", cfg.FirecrackerBin)
	if err != nil {
		return nil, fmt.Errorf("firecracker: open: %w", err)
	}
	state, err := filepath.Abs(cfg.StateDir)
	if err != nil {
		return nil, fmt.Errorf("firecracker: open: state dir: %w", err)
	}
	vmsDir := filepath.Join(state, "vms")
	for _, d := range []string{state, vmsDir} {
		if err := mkdirPrivate(d); err != nil {
			return nil, fmt.Errorf("firecracker: open: state dir: %w", err)
		}
	}
	reg, err := registry.Open(filepath.Join(state, "registry"))
	if err != nil {
		return nil, fmt.Errorf("firecracker: open: %w", err)
	}
	snaps, err := snapshot.Open(filepath.Join(state, "snapshots"))
	if err != nil {
		reg.Close()
		return nil, fmt.Errorf("firecracker: open: %w", err)
	}
	images, err := openImages(cfg, state)
	if err != nil {
		reg.Close()
		return nil, fmt.Errorf("firecracker: open: %w", err)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	bgctx, cancel := context.WithCancel(context.Background())
	r := &Runtime{
		cfg: cfg, bin: bin, state: state, vmsDir: vmsDir,
		reg: reg, snaps: snaps, images: images, log: log,
		ctx: bgctx, cancel: cancel,
		watchers: make(map[string]*watcher),
		exits:    make(map[procRecord]exitInfo),
	}
	r.launcher = directLauncher{r: r}
	if cfg.Jailer != nil {
		jl, err := newJailLauncher(r, *cfg.Jailer)
		if err != nil {
			cancel()
			reg.Close()
			return nil, fmt.Errorf("firecracker: open: %w", err)
		}
		r.launcher = jl
	}
	r.sweepVMDirs()
	r.sweepJails()
	r.sweepLeases()
	if cfg.Network != nil {
		r.cleanupNetwork(ctx)
	}
	if cfg.ConsoleMaxBytes > 0 {
		r.bg.Go(r.trimLoop)
	}
	return r, nil
}

func (c Config) withDefaults() (Config, error) {
	if c.StateDir == "" {
		return c, invalidArg("config: StateDir is required")
	}
	for _, d := range []struct {
		name string
		v    *time.Duration
		def  time.Duration
	}{
		{"ReadyTimeout", &c.ReadyTimeout, DefaultReadyTimeout},
		{"APITimeout", &c.APITimeout, DefaultAPITimeout},
		{"SnapshotTimeout", &c.SnapshotTimeout, DefaultSnapshotTimeout},
		{"StopTimeout", &c.StopTimeout, microvm.DefaultStopTimeout},
	} {
		switch {
		case *d.v < 0:
			return c, invalidArg("config: %s must be >= 0 (got %s)", d.name, *d.v)
		case *d.v == 0:
			*d.v = d.def
		}
	}
	if c.ConsoleMaxBytes == 0 {
		c.ConsoleMaxBytes = DefaultConsoleMaxBytes
	}
	switch c.DefaultMemoryBackend {
	case microvm.MemoryBackendDefault:
		c.DefaultMemoryBackend = microvm.MemoryBackendFile
	case microvm.MemoryBackendFile, microvm.MemoryBackendUffd:
	default:
		return c, invalidArg("config: DefaultMemoryBackend must be %q or %q (got %q)",
			microvm.MemoryBackendFile, microvm.MemoryBackendUffd, c.DefaultMemoryBackend)
	}
	if c.FirecrackerBin == "" {
		c.FirecrackerBin = "firecracker"
	}
	if len(c.Env) == 0 {
		c.Env = defaultEnv
	}
	c.Env = slices.Clone(c.Env)
	return c, nil
}

// findBinary resolves a binary named by path or by PATH lookup and checks
// that it is a regular, executable file.
func findBinary(what, name string) (string, error) {
	path := name
	if !strings.ContainsRune(name, '/') {
		p, err := exec.LookPath(name)
		if err != nil {
			return "", fmt.Errorf("%s %q: not found in PATH: %w", what, name, microvm.ErrInvalidArgument)
		}
		path = p
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", fmt.Errorf("%s %q: %w", what, name, err)
	}
	fi, err := os.Stat(abs)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return "", fmt.Errorf("%s %s: does not exist: %w", what, abs, microvm.ErrInvalidArgument)
	case err != nil:
		return "", fmt.Errorf("%s %s: %w: %w", what, abs, microvm.ErrInvalidArgument, err)
	case !fi.Mode().IsRegular():
		return "", fmt.Errorf("%s %s: is not a regular file (mode %s): %w", what, abs, fi.Mode().Type(), microvm.ErrInvalidArgument)
	case fi.Mode().Perm()&0o111 == 0 || unix.Access(abs, unix.X_OK) != nil:
		return "", fmt.Errorf("%s %s: is not executable (mode %s): %w", what, abs, fi.Mode().Perm(), microvm.ErrInvalidArgument)
	}
	return abs, nil
}

// mkdirPrivate creates dir (mode 0700) if missing; an existing directory
// is accepted as it is.
func mkdirPrivate(dir string) error {
	err := os.Mkdir(dir, 0o700)
	if errors.Is(err, fs.ErrExist) {
		fi, serr := os.Stat(dir)
		if serr != nil {
			return serr
		}
		if !fi.IsDir() {
			return fmt.Errorf("%s exists and is not a directory", dir)
		}
		return nil
	}
	if errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(filepath.Dir(dir), 0o700); err != nil {
			return err
		}
		err = os.Mkdir(dir, 0o700)
		if errors.Is(err, fs.ErrExist) {
			return nil
		}
	}
	return err
}

// Close stops the runtime's background work (crash watchers, log
// trimming) after the operations in flight finish, and releases its
// files. The VMs keep running; a new Runtime over the same state directory
// adopts them. Later calls return microvm.ErrClosed; closing twice is not
// an error.
func (r *Runtime) Close() error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	r.mu.Unlock()
	r.ops.Wait()
	r.cancel()
	r.mu.Lock()
	for _, w := range r.watchers {
		w.p.close() // wakes the watcher
	}
	r.mu.Unlock()
	r.bg.Wait()
	r.mu.Lock()
	r.watchers = nil
	r.mu.Unlock()
	r.dirWatchOnce.Do(func() {}) // no watch made after this
	if r.dirWatch != nil {
		r.dirWatch.close()
	}
	return r.reg.Close()
}

// begin registers an operation in flight, or returns ErrClosed.
func (r *Runtime) begin() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return microvm.ErrClosed
	}
	r.ops.Add(1)
	return nil
}

func (r *Runtime) end() { r.ops.Done() }

// enterVM starts an operation on VM id: it checks the id, that the runtime
// is open and ctx is live, then takes the VM's lock and loads its record.
// done unlocks the VM and ends the operation.
func (r *Runtime) enterVM(ctx context.Context, id string) (rec *vmRecord, done func(), err error) {
	if err := microvm.ValidateID(id); err != nil {
		return nil, nil, err
	}
	if err := r.begin(); err != nil {
		return nil, nil, err
	}
	if err := ctx.Err(); err != nil {
		r.end()
		return nil, nil, err
	}
	unlock, rec, err := r.lockLoad(ctx, id)
	if err != nil {
		r.end()
		return nil, nil, err
	}
	return rec, func() { unlock(); r.end() }, nil
}

// lockVM takes the cross-process lock of one VM.
func (r *Runtime) lockVM(ctx context.Context, id string) (func(), error) {
	unlock, err := r.reg.Lock(ctx, "vm-"+id)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("lock vm %q: %w", id, err)
	}
	return unlock, nil
}

// tryLockVM takes the lock of one VM if it is free now; ok is false when
// another operation holds it.
func (r *Runtime) tryLockVM(id string) (unlock func(), ok bool) {
	unlock, ok, err := r.reg.TryLock("vm-" + id)
	return unlock, ok && err == nil
}

// Get returns the VM's current view.
func (r *Runtime) Get(ctx context.Context, id string) (microvm.VM, error) {
	if err := microvm.ValidateID(id); err != nil {
		return microvm.VM{}, err
	}
	if err := r.begin(); err != nil {
		return microvm.VM{}, err
	}
	defer r.end()
	if err := ctx.Err(); err != nil {
		return microvm.VM{}, err
	}
	rec, err := r.load(id)
	if err != nil {
		return microvm.VM{}, err
	}
	if rec, err = r.ensureAdopted(ctx, rec, true); err != nil {
		return microvm.VM{}, err
	}
	snaps, err := r.snapshotsOf(id)
	if err != nil {
		return microvm.VM{}, err
	}
	return r.view(rec, snaps), nil
}

// List returns every VM, sorted by id.
func (r *Runtime) List(ctx context.Context) ([]microvm.VM, error) {
	if err := r.begin(); err != nil {
		return nil, err
	}
	defer r.end()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	ids, err := r.reg.List(kindVM)
	if err != nil {
		return nil, fmt.Errorf("list vms: %w", err)
	}
	all, err := r.listSnapshots()
	if err != nil {
		return nil, fmt.Errorf("list vms: %w", err)
	}
	byVM := map[string][]string{}
	for _, s := range all {
		byVM[s.VMID] = append(byVM[s.VMID], s.ID)
	}
	// Reading and decoding the records is most of the work: a few
	// goroutines share it, each filling its slots of the result.
	views := make([]microvm.VM, len(ids))
	found := make([]bool, len(ids))
	errs := make([]error, len(ids))
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(listWorkers, len(ids)) {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= len(ids) {
					return
				}
				id := ids[i]
				rec, err := r.load(id)
				if errors.Is(err, microvm.ErrNotFound) {
					continue // destroyed meanwhile
				}
				if err != nil {
					errs[i] = err
					continue
				}
				if rec, err = r.ensureAdopted(ctx, rec, false); err != nil {
					continue // removed by recovery
				}
				views[i], found[i] = r.view(rec, slices.Clone(byVM[id])), true
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("list vms: %w", err)
	}
	vms := make([]microvm.VM, 0, len(ids))
	for i, ok := range found {
		if ok {
			vms = append(vms, views[i])
		}
	}
	return vms, nil
}

// Logs returns up to lines of the newest lines of the VM's console and
// firecracker log (all that is kept when lines <= 0), oldest first: the
// console's lines, then the log's; with lines > 0 each side gets at least
// half when it has that many.
func (r *Runtime) Logs(ctx context.Context, id string, lines int) ([]string, error) {
	if err := microvm.ValidateID(id); err != nil {
		return nil, err
	}
	if err := r.begin(); err != nil {
		return nil, err
	}
	defer r.end()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if _, err := r.load(id); err != nil {
		return nil, err
	}
	return r.outputTail(id, lines)
}

// outputTail reads the last lines of a VM's output files, trimming them
// first.
func (r *Runtime) outputTail(id string, lines int) ([]string, error) {
	p := r.paths(id)
	limit := r.cfg.ConsoleMaxBytes
	if limit <= 0 {
		limit = DefaultConsoleMaxBytes * 8 // unbounded files: read a sane tail
	} else {
		r.trimVM(id)
	}
	console, err := tailLines(p.console, lines, limit)
	if err != nil {
		return nil, fmt.Errorf("vm %q: read console: %w", id, err)
	}
	log, err := tailLines(p.log, lines, limit)
	if err != nil {
		return nil, fmt.Errorf("vm %q: read log: %w", id, err)
	}
	return mergeLogs(console, log, lines), nil
}

// lastOutput returns the last lines of a VM's output for an error,
// ignoring read errors.
func (r *Runtime) lastOutput(id string) []string {
	lines, _ := r.outputTail(id, outputLines)
	return lines
}

// trimVM bounds the output files of one VM.
func (r *Runtime) trimVM(id string) {
	limit := r.cfg.ConsoleMaxBytes
	if limit <= 0 {
		return
	}
	p := r.paths(id)
	for _, f := range []struct {
		path string
		mode trimMode
	}{{p.console, trimCollapse}, {p.log, trimPunch}, {p.metrics, trimPunch}} {
		if f.path == p.metrics {
			r.collectMetrics(id) // nothing is cut unread
		}
		if err := trimFile(f.path, limit, f.mode); err != nil {
			r.log.Warn("trim output file", "vm", id, "file", f.path, "err", err)
		}
	}
}

// trimLoop bounds the output files of the watched VMs every trimInterval.
func (r *Runtime) trimLoop() {
	t := time.NewTicker(trimInterval)
	defer t.Stop()
	for {
		select {
		case <-r.ctx.Done():
			return
		case <-t.C:
		}
		r.mu.Lock()
		ids := make([]string, 0, len(r.watchers))
		for id := range r.watchers {
			ids = append(ids, id)
		}
		r.mu.Unlock()
		for _, id := range ids {
			r.trimVM(id)
		}
	}
}

// trashPrefix marks a VM directory being removed.
const trashPrefix = ".trash-"

// removeVMDir removes a VM's directory: first renamed to a hidden name (so
// a crash midway never leaves a directory that looks live), then deleted.
func (r *Runtime) removeVMDir(id string) error {
	p := r.paths(id)
	dir := p.dir
	forgetMetrics(metricsState(p))
	trash := filepath.Join(r.vmsDir, trashPrefix+id+"-"+strconv.FormatUint(rand.Uint64(), 36))
	if err := os.Rename(dir, trash); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return os.RemoveAll(dir)
	}
	return os.RemoveAll(trash)
}
