package firecracker

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	microvm "github.com/mvm-dev/microvm"
	"github.com/mvm-dev/microvm/internal/registry"
)

// ErrUIDRangeExhausted reports that every uid of JailerConfig's range is
// leased to a live VM.
var ErrUIDRangeExhausted = errors.New("jailer uid range exhausted")

// ErrJailer reports a jailer that cannot run VMs here: missing, of the
// wrong kind, or failing before it execs firecracker. The error names the
// cause.
var ErrJailer = errors.New("jailer")

// ErrBinaryChanged reports that a binary a jailed VM recorded (its
// jailer, or the firecracker paired with it) is gone, or reports another
// version than when it was recorded. The error names the file and both
// versions; nothing was started.
var ErrBinaryChanged = errors.New("recorded binary changed")

// Defaults of JailerConfig.
const (
	// DefaultJailUIDBase and DefaultJailUIDCount make the default uid
	// range [900000, 901024); each VM's gid equals its uid.
	DefaultJailUIDBase  = 900000
	DefaultJailUIDCount = 1024
	// DefaultJailPidsMax bounds the tasks of one jailed firecracker.
	DefaultJailPidsMax = 128
	// DefaultJailMemoryOverheadMiB is added to the guest's memory for the
	// memory limit of a jailed firecracker (the VMM's own needs).
	DefaultJailMemoryOverheadMiB = 128
	// DefaultJailNoFile is the open-files limit of a jailed firecracker.
	DefaultJailNoFile = 2048
)

// JailerConfig runs every VM's firecracker through Firecracker's jailer:
// in a chroot of its own under ChrootBase, as a uid and gid of its own
// leased from a range (no two live VMs share one), in a new PID
// namespace, with seccomp on, in cgroups that bound its CPU (the spec's
// vCPUs), memory (the guest's plus MemoryOverheadMiB) and tasks, and with
// limits on open files and file size. The kernel, initrd and drives are
// made visible inside the chroot without a copy: hard-linked when on the
// chroot's file system, else bind-mounted (read-only unless the drive is
// writable); a writable drive is owned by the VM's uid while its process
// lives and given back afterwards. The runtime must run as root.
type JailerConfig struct {
	// Bin is the jailer binary (a path, or a name looked up in PATH);
	// required. Its version must match the firecracker binary's. It is
	// the jailer of the VMs this Runtime creates or restores: each VM's
	// record keeps it beside its firecracker binary, and every later
	// process of the VM runs that pair (VM.Backend.Jailer, Binary).
	Bin string
	// ChrootBase is the directory under which chroots are made
	// (<ChrootBase>/<firecracker binary name>/<vm id>/root). Default
	// <StateDir>/jail. On the images' file system, files are hard-linked;
	// elsewhere, bind-mounted. It belongs to one state directory: each
	// VM's chroot is under the name of the firecracker binary it
	// recorded, and Open removes the <name>/<id> directories (of every
	// name containing "firecracker") that no VM of the state directory
	// explains.
	ChrootBase string
	// UIDBase and UIDCount are the uid range [UIDBase,
	// UIDBase+UIDCount); the gid of each VM equals its uid. Leases are
	// kept in the state directory: runtimes over different state
	// directories need ranges of their own. Defaults DefaultJailUIDBase
	// and DefaultJailUIDCount.
	UIDBase, UIDCount int
	// CgroupVersion is 1 or 2; 0 picks 2 on a host with a unified
	// hierarchy at /sys/fs/cgroup and 1 otherwise (hybrid hosts, whose
	// v1 controllers are under /sys/fs/cgroup/<controller>).
	CgroupVersion int
	// ParentCgroup is the cgroup under which each VM gets its own (named
	// after the VM). It belongs to one state directory: the runtime
	// removes the cgroups under it that no VM of its state directory
	// explains. Default "mvm-" and 12 hex digits of the state
	// directory's SHA-256.
	ParentCgroup string
	// PidsMax bounds the tasks of a VM's firecracker. Default
	// DefaultJailPidsMax.
	PidsMax int
	// MemoryOverheadMiB is added to the guest's memory for the memory
	// limit. Default DefaultJailMemoryOverheadMiB.
	MemoryOverheadMiB int
	// NoFile is the limit on open files. Default DefaultJailNoFile.
	NoFile int
	// SkipVersionCheck lets Open accept a firecracker binary whose
	// --version differs from the jailer's (a custom build): by default
	// they must be of the same release (the same version exactly, as
	// Firecracker's release archives ship them), since the jailer passes
	// firecracker the arguments of its own. It also lets a VM run the
	// jailer and firecracker it recorded after either was replaced by
	// another version (the record then takes the new versions), and
	// pair the runtime's jailer with another release's firecracker in a
	// record that names no jailer; by default both fail with
	// ErrBinaryChanged or ErrJailer, and nothing is started.
	SkipVersionCheck bool
	// ExtraFiles are more files to make visible, read-only, in every
	// chroot: host path -> absolute path inside the chroot (e.g. a file
	// a wrapper of firecracker or a custom seccomp filter reads). They
	// are linked or bind-mounted like the images, and must be readable
	// by others.
	ExtraFiles map[string]string
}

// kindUID is the registry kind of uid leases: id = the uid, value the VM.
const kindUID = "uid"

// uidLease is the value of a uid lease.
type uidLease struct {
	VM string `json:"vm"`
}

// cgroupRoot is where cgroup hierarchies are mounted.
const cgroupRoot = "/sys/fs/cgroup"

// jailLauncher runs firecracker through the jailer: the pair a VM
// recorded (see binaries), or, for a VM that has none, the runtime's.
type jailLauncher struct {
	r       *Runtime
	cfg     JailerConfig
	jailer  string // absolute path of the runtime's jailer
	bin     string // absolute path of the runtime's firecracker
	base    string // absolute chroot base
	cgroupV int

	mu       sync.Mutex
	versions map[string]fileVersion // by path, see versionOf
}

// fileVersion is the version a binary reported and the identity of the
// file that reported it.
type fileVersion struct {
	dev, ino     uint64
	size         int64
	mtime, ctime unix.Timespec
	version      string
}

// newJailLauncher checks cfg and the host, and returns the launcher.
func newJailLauncher(r *Runtime, cfg JailerConfig) (*jailLauncher, error) {
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("%w: jailed mode needs root (the jailer makes device nodes, chroots and changes uid): %w", ErrJailer, microvm.ErrUnsupported)
	}
	if cfg.Bin == "" {
		return nil, invalidArg("config: Jailer.Bin is required")
	}
	jailer, err := findBinary("jailer binary", cfg.Bin)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrJailer, err)
	}
	if cfg.UIDBase == 0 {
		cfg.UIDBase = DefaultJailUIDBase
	}
	if cfg.UIDCount == 0 {
		cfg.UIDCount = DefaultJailUIDCount
	}
	if cfg.UIDBase < 1 || cfg.UIDCount < 1 || int64(cfg.UIDBase)+int64(cfg.UIDCount) > 1<<31-1 {
		return nil, invalidArg("config: Jailer uid range [%d, %d+%d) must be positive, and not include uid 0", cfg.UIDBase, cfg.UIDBase, cfg.UIDCount)
	}
	if cfg.ParentCgroup == "" {
		sum := sha256.Sum256([]byte(r.state))
		cfg.ParentCgroup = "mvm-" + hex.EncodeToString(sum[:6])
	}
	if strings.Contains(cfg.ParentCgroup, "..") || filepath.IsAbs(cfg.ParentCgroup) {
		return nil, invalidArg("config: Jailer.ParentCgroup %q must be a relative path without ..", cfg.ParentCgroup)
	}
	if cfg.PidsMax == 0 {
		cfg.PidsMax = DefaultJailPidsMax
	}
	if cfg.MemoryOverheadMiB == 0 {
		cfg.MemoryOverheadMiB = DefaultJailMemoryOverheadMiB
	}
	if cfg.NoFile == 0 {
		cfg.NoFile = DefaultJailNoFile
	}
	for host, in := range cfg.ExtraFiles {
		clean := filepath.Clean(in)
		if !filepath.IsAbs(host) || !filepath.IsAbs(in) || clean != in || clean == "/" || strings.Count(clean, "/") < 1 {
			return nil, invalidArg("config: Jailer.ExtraFiles[%q] = %q: both paths must be absolute and clean, and not the chroot's root", host, in)
		}
	}
	if cfg.PidsMax < 0 || cfg.MemoryOverheadMiB < 0 || cfg.NoFile < 0 {
		return nil, invalidArg("config: Jailer.PidsMax, MemoryOverheadMiB and NoFile must be >= 0")
	}
	base := cfg.ChrootBase
	if base == "" {
		base = filepath.Join(r.state, "jail")
	}
	if base, err = filepath.Abs(base); err != nil {
		return nil, fmt.Errorf("config: Jailer.ChrootBase: %w", err)
	}
	if err := os.MkdirAll(base, 0o700); err != nil {
		return nil, fmt.Errorf("config: Jailer.ChrootBase %s: %w", base, err)
	}
	v := cfg.CgroupVersion
	if v == 0 {
		v = 1
		if _, err := os.Stat(filepath.Join(cgroupRoot, "cgroup.controllers")); err == nil {
			v = 2
		}
	}
	if v != 1 && v != 2 {
		return nil, invalidArg("config: Jailer.CgroupVersion must be 0, 1 or 2 (got %d)", v)
	}
	if err := checkExecName(r.bin); err != nil {
		return nil, invalidArg("config: %v", err)
	}
	l := &jailLauncher{r: r, cfg: cfg, jailer: jailer, bin: r.bin, base: base, cgroupV: v, versions: map[string]fileVersion{}}
	if err := l.checkControllers(); err != nil {
		return nil, err
	}
	if _, _, err := l.pairVersions(jailer, r.bin); err != nil {
		return nil, err
	}
	// A jailed firecracker is the jailer's child in a new PID namespace:
	// once the jailer exits, it is reparented to its nearest subreaper.
	// The runtime is one, so that it can wait for and reap the VMM like a
	// direct child.
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		return nil, fmt.Errorf("%w: become a child subreaper: %w", ErrJailer, err)
	}
	return l, nil
}

// checkExecName checks that the jailer will run bin: it only execs a
// file whose name contains "firecracker".
func checkExecName(bin string) error {
	if name := filepath.Base(bin); !strings.Contains(name, "firecracker") {
		return fmt.Errorf("the jailer only runs a binary whose name contains \"firecracker\" (got %q)", name)
	}
	return nil
}

// pairVersions returns the versions jailer and bin report, and refuses
// a jailer and a firecracker of different releases (unless
// SkipVersionCheck, which also accepts a firecracker that reports no
// version: fv is then ""): the jailer passes firecracker arguments of
// its own release.
func (l *jailLauncher) pairVersions(jailer, bin string) (jv, fv string, err error) {
	jv, err = l.versionOf(jailer, "Jailer v")
	if err != nil {
		return "", "", fmt.Errorf("%w: %s --version did not report a jailer (%v): %w", ErrJailer, jailer, err, microvm.ErrInvalidArgument)
	}
	fv, err = l.versionOf(bin, "Firecracker v")
	if err != nil && !l.cfg.SkipVersionCheck {
		return "", "", fmt.Errorf("%w: firecracker %s --version did not report a version (%w)", ErrJailer, bin, err)
	}
	if l.cfg.SkipVersionCheck || fv == jv {
		return jv, fv, nil
	}
	return "", "", fmt.Errorf("%w: jailer %s is v%s but firecracker %s is v%s: use the jailer of the same release, or turn the jailer's version check off: %w",
		ErrJailer, jailer, jv, bin, fv, microvm.ErrInvalidArgument)
}

// versionOf returns what `bin --version` reports after prefix on its
// first line ("Jailer v", "Firecracker v"). The answer is kept for as
// long as the file stays the same (device, inode, size, mtime, ctime):
// a VM's launch checks its pair without running either again.
func (l *jailLauncher) versionOf(bin, prefix string) (string, error) {
	var st unix.Stat_t
	if err := unix.Stat(bin, &st); err != nil {
		return "", &fs.PathError{Op: "stat", Path: bin, Err: err}
	}
	id := fileVersion{dev: st.Dev, ino: st.Ino, size: st.Size, mtime: st.Mtim, ctime: st.Ctim}
	l.mu.Lock()
	c, ok := l.versions[bin]
	l.mu.Unlock()
	if id.version = c.version; ok && c == id {
		return c.version, nil
	}
	out, err := runOutput(bin, "--version")
	v, ok := strings.CutPrefix(firstLine(out), prefix)
	if err != nil || !ok {
		if err == nil {
			err = fmt.Errorf("its first line is %q", firstLine(out))
		}
		return "", err
	}
	id.version = v
	l.mu.Lock()
	l.versions[bin] = id
	l.mu.Unlock()
	return v, nil
}

// binaries returns the jailer and firecracker rec's VM runs, and checks
// them before anything is made for a launch.
//
// A VM that recorded a pair (rec.Jailer, rec.Binary) runs it: each file
// must still exist and report the version recorded, else the launch
// fails with ErrBinaryChanged naming the file and both versions (with
// SkipVersionCheck, a changed version is accepted and recorded). A VM
// that recorded none (a new VM, a record written before the jailer was
// kept, a VM whose processes ran directly) gets the runtime's jailer,
// paired with its firecracker (rec.Binary, or the runtime's), which must
// be of the same release (pairVersions); rec.Jailer then records the pair.
func (l *jailLauncher) binaries(rec *vmRecord) (jailer, bin string, err error) {
	bin = l.r.binOf(rec)
	if err := checkExecName(bin); err != nil {
		return "", "", fmt.Errorf("%w: %v: %w", ErrJailer, err, microvm.ErrInvalidArgument)
	}
	jb := rec.Jailer
	if jb == nil {
		// The versions as the files are now (a stat each while they are
		// the files Open probed, or that a launch probed since).
		jv, fv, err := l.pairVersions(l.jailer, bin)
		if err != nil {
			return "", "", err
		}
		rec.Jailer = &jailerBinary{Path: l.jailer, Version: jv, FirecrackerVersion: fv}
		return l.jailer, bin, nil
	}
	jv, err := l.checkRecorded("jailer", jb.Path, "Jailer v", jb.Version)
	if err != nil {
		return "", "", err
	}
	fv, err := l.checkRecorded("firecracker", bin, "Firecracker v", jb.FirecrackerVersion)
	if err != nil {
		return "", "", err
	}
	if jv != jb.Version || fv != jb.FirecrackerVersion {
		l.r.log.Warn("vm runs a replaced binary (SkipVersionCheck)", "vm", rec.ID,
			"jailer", jb.Path, "was", jb.Version, "now", jv, "firecracker", bin, "was", jb.FirecrackerVersion, "now", fv)
		rec.Jailer = &jailerBinary{Path: jb.Path, Version: jv, FirecrackerVersion: fv}
	}
	return jb.Path, bin, nil
}

// checkRecorded checks that the binary path (what: "jailer" or
// "firecracker") a VM recorded at version want still exists and reports
// want, and returns the version it reports. An unknown want ("") is not
// checked; a changed one is accepted with SkipVersionCheck.
//
// The errors name the file and the version recorded, and say what to do:
// the VM's jailer and firecracker are a pair of one release, and another
// release of either may not run with the other.
func (l *jailLauncher) checkRecorded(what, path, prefix, want string) (string, error) {
	shown := "v" + want
	if want == "" {
		shown = "of unknown version"
	}
	v, err := l.versionOf(path, prefix)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return "", fmt.Errorf("%s %s (%s when the VM recorded it) is gone: put that release back at that path: %w (%w)", what, path, shown, ErrBinaryChanged, fs.ErrNotExist)
	case err != nil && want != "":
		return "", fmt.Errorf("%s %s (%s when the VM recorded it) no longer reports a version (%v): %w", what, path, shown, err, ErrBinaryChanged)
	case err != nil:
		return want, nil
	case want != "" && v != want && !l.cfg.SkipVersionCheck:
		return "", fmt.Errorf("%s %s was v%s when the VM recorded it and is now v%s: put that release back at that path: %w", what, path, want, v, ErrBinaryChanged)
	}
	return v, nil
}

// runOutput runs bin with args (no shell, a bounded time) and returns all
// its output.
func runOutput(bin string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return exec.CommandContext(ctx, bin, args...).CombinedOutput()
}

func firstLine(b []byte) string {
	s, _, _ := strings.Cut(strings.TrimSpace(string(b)), "\n")
	return s
}

// checkControllers checks that the controllers the limits use are
// available: v1, each hierarchy mounted; v2, each listed in the unified
// hierarchy's cgroup.controllers.
func (l *jailLauncher) checkControllers() error {
	var have map[string]bool
	if l.cgroupV == 2 {
		path := filepath.Join(cgroupRoot, "cgroup.controllers")
		raw, err := os.ReadFile(path)
		if err != nil {
			return fmt.Errorf("%w: cgroup v2: no unified hierarchy at %s (%v): use CgroupVersion 1 on a hybrid host: %w", ErrJailer, cgroupRoot, err, microvm.ErrUnsupported)
		}
		have = map[string]bool{}
		for _, c := range strings.Fields(string(raw)) {
			have[c] = true
		}
	}
	for _, c := range l.controllers() {
		if have != nil && !have[c] {
			return fmt.Errorf("%w: cgroup v2 controller %q is not enabled (%s lists %v): %w", ErrJailer, c, filepath.Join(cgroupRoot, "cgroup.controllers"), have, microvm.ErrUnsupported)
		}
		if have == nil {
			if _, err := os.Stat(filepath.Join(l.controllerDir(c), "tasks")); err != nil {
				return fmt.Errorf("%w: cgroup v1 controller %q is not mounted at %s: %w", ErrJailer, c, l.controllerDir(c), microvm.ErrUnsupported)
			}
		}
	}
	return nil
}

// controllers are the cgroup controllers the limits use.
func (l *jailLauncher) controllers() []string { return []string{"cpu", "memory", "pids"} }

// controllerDir is where controller c's hierarchy is (v1), or the unified
// hierarchy (v2).
func (l *jailLauncher) controllerDir(c string) string {
	if l.cgroupV == 2 {
		return cgroupRoot
	}
	return filepath.Join(cgroupRoot, c)
}

// cgroupDirs are the cgroup directories of VM id.
func (l *jailLauncher) cgroupDirs(id string) []string {
	if l.cgroupV == 2 {
		return []string{filepath.Join(cgroupRoot, l.cfg.ParentCgroup, id)}
	}
	var out []string
	for _, c := range l.controllers() {
		out = append(out, filepath.Join(l.controllerDir(c), l.cfg.ParentCgroup, id))
	}
	return out
}

// cgroupArgs are the jailer's --cgroup settings for spec.
func (l *jailLauncher) cgroupArgs(spec microvm.Spec) []string {
	const period = 100000
	quota := spec.VCPUs * period
	mem := (int64(spec.MemoryMiB) + int64(l.cfg.MemoryOverheadMiB)) << 20
	if l.cgroupV == 2 {
		return []string{
			"--cgroup", fmt.Sprintf("cpu.max=%d %d", quota, period),
			"--cgroup", fmt.Sprintf("memory.max=%d", mem),
			"--cgroup", fmt.Sprintf("pids.max=%d", l.cfg.PidsMax),
		}
	}
	return []string{
		"--cgroup", fmt.Sprintf("cpu.cfs_period_us=%d", period),
		"--cgroup", fmt.Sprintf("cpu.cfs_quota_us=%d", quota),
		"--cgroup", fmt.Sprintf("memory.limit_in_bytes=%d", mem),
		"--cgroup", fmt.Sprintf("pids.max=%d", l.cfg.PidsMax),
	}
}

// prepare leases a uid and describes the chroot, its files and the
// cgroups in rec.Jail.
func (l *jailLauncher) prepare(ctx context.Context, rec *vmRecord) (err error) {
	if rec.Jail != nil {
		return fmt.Errorf("vm %q: the record still names a jail (%s): %w", rec.ID, rec.Jail.Dir, microvm.ErrInvalidArgument)
	}
	jailer, bin, err := l.binaries(rec)
	if err != nil {
		return err
	}
	execName := filepath.Base(bin)
	uid, err := l.r.leaseUID(ctx, rec.ID)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			if rerr := l.r.releaseUID(uid, rec.ID); rerr != nil {
				err = errors.Join(err, fmt.Errorf("release uid %d: %w", uid, rerr))
			}
		}
	}()
	dir := filepath.Join(l.base, execName, rec.ID)
	j := &jailRecord{
		Jailer: jailer, ExecName: execName,
		UID: uid, GID: uid,
		Dir: dir, Root: filepath.Join(dir, "root"),
		Files:   map[string]string{},
		Cgroups: l.cgroupDirs(rec.ID),
	}
	baseDev, err := devOf(l.base)
	if err != nil {
		return fmt.Errorf("chroot base %s: %w", l.base, err)
	}
	// What firecracker opens by path, and whether it writes it.
	type file struct {
		host, name string
		write      bool
		ours       bool // the snapshot store's, not the user's
	}
	var files []file
	if k := rec.Spec.Kernel; k != "" && rec.Op != opRestore {
		files = append(files, file{k, "kernel", false, false})
	}
	if i := rec.Spec.Initrd; i != "" && rec.Op != opRestore {
		files = append(files, file{i, "initrd", false, false})
	}
	for _, d := range specDriveList(rec.Spec) {
		files = append(files, file{d.Path, "drive-" + d.ID, !d.ReadOnly, false})
	}
	if rec.Op == opRestore && rec.MemorySnapshot != "" {
		state, _, err := l.r.snaps.Paths(rec.MemorySnapshot)
		if err == nil {
			files = append(files, file{state, "snapshot-state", false, true})
			if rec.MemoryBackend != microvm.MemoryBackendUffd {
				mem, merr := l.r.snaps.MemoryFile(ctx, rec.MemorySnapshot)
				if merr != nil {
					err = merr
				} else {
					files = append(files, file{mem, "snapshot-mem", false, true})
				}
			}
		}
		if err != nil {
			return err
		}
	}
	for host, in := range l.cfg.ExtraFiles {
		files = append(files, file{host, strings.TrimPrefix(in, "/"), false, false})
	}
	var problems []microvm.FieldError
	for _, f := range files {
		if _, dup := j.Files[f.host]; dup {
			continue
		}
		fi, err := os.Stat(f.host)
		if err != nil {
			continue // firecracker reports it, as in a direct launch
		}
		st := fi.Sys().(*syscall.Stat_t)
		if f.ours && fi.Mode().Perm()&0o004 == 0 {
			// The store's files are read-only for their owner, in
			// directories only root may enter: readable by others, they
			// are reachable only through the links in the chroots.
			if err := os.Chmod(f.host, fi.Mode().Perm()|0o444); err != nil {
				return fmt.Errorf("make snapshot file %s readable in the chroot: %w", f.host, err)
			}
			fi, _ = os.Stat(f.host)
		}
		if !f.write && fi.Mode().Perm()&0o004 == 0 {
			problems = append(problems, microvm.FieldError{Field: f.name, Rule: fmt.Sprintf(
				"%s is not readable by others (mode %s): a jailed firecracker runs as a uid of its own and needs read permission for others on a read-only file",
				f.host, fi.Mode().Perm())})
			continue
		}
		inJail := "/" + f.name
		j.Files[f.host] = inJail
		if uint64(st.Dev) != baseDev || !fi.Mode().IsRegular() {
			j.Mounts = append(j.Mounts, filepath.Join(j.Root, f.name))
		}
		if f.write {
			j.Owners = append(j.Owners, ownerRecord{Path: f.host, UID: int(st.Uid), GID: int(st.Gid), Dev: uint64(st.Dev), Ino: st.Ino})
		}
	}
	if len(problems) > 0 {
		return &microvm.SpecError{Problems: problems}
	}
	rec.Jail = j
	return nil
}

// specDriveList returns the root drive and the other drives of spec.
func specDriveList(spec microvm.Spec) []microvm.Drive {
	return append([]microvm.Drive{spec.RootDrive}, spec.Drives...)
}

func devOf(path string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, err
	}
	return st.Dev, nil
}

// start makes the chroot and its files, and runs the jailer, which
// execs firecracker in a new PID namespace and exits; the pid it leaves
// in <root>/<exec name>.pid is the VMM's.
func (l *jailLauncher) start(ctx context.Context, rec *vmRecord, lp vmPaths, out *os.File, keep []*os.File) (*proc, error) {
	j := rec.Jail
	// A chroot left by an earlier process of this VM goes first (its
	// record was released; this is what a crash of the release left).
	if err := removeJailTree(j.Dir); err != nil {
		return nil, fmt.Errorf("remove leftover chroot %s: %w", j.Dir, err)
	}
	if err := mkdirChroot(j.Root); err != nil {
		return nil, fmt.Errorf("create chroot %s: %w", j.Root, err)
	}
	if err := os.Chown(j.Root, j.UID, j.GID); err != nil {
		return nil, fmt.Errorf("chroot %s: %w", j.Root, err)
	}
	writable := map[string]bool{}
	for _, o := range j.Owners {
		writable[o.Path] = true
	}
	for host, inJail := range j.Files {
		target := filepath.Join(j.Root, inJail)
		if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
			return nil, fmt.Errorf("make %s visible in the chroot: %w", host, err)
		}
		if slices.Contains(j.Mounts, target) {
			if err := bindFile(host, target, !writable[host]); err != nil {
				return nil, fmt.Errorf("make %s visible in the chroot: %w", host, err)
			}
		} else if err := unix.Linkat(unix.AT_FDCWD, host, unix.AT_FDCWD, target, unix.AT_SYMLINK_FOLLOW); err != nil {
			// (AT_SYMLINK_FOLLOW: a symbolic link's target, not the link,
			// which would dangle in the chroot.)
			return nil, fmt.Errorf("make %s visible in the chroot (hard link): %w", host, err)
		}
	}
	for _, o := range j.Owners {
		if err := os.Chown(o.Path, j.UID, j.GID); err != nil {
			return nil, fmt.Errorf("give writable drive %s to uid %d: %w", o.Path, j.UID, err)
		}
	}
	if rec.Net != nil {
		nic, _ := managedInterface(rec.Spec)
		owner, ok := l.r.cfg.Network.(TAPOwner)
		if !ok {
			return nil, fmt.Errorf("network[%s]: the runtime's Network cannot give the TAP to the jailed uid (it does not implement TAPOwner): %w", nic.ID, microvm.ErrUnsupported)
		}
		if err := owner.SetTAPOwner(ctx, rec.ID, nic, uint32(j.UID), uint32(j.GID)); err != nil {
			return nil, fmt.Errorf("give TAP %s to uid %d: %w", rec.Net.TAP, j.UID, err)
		}
	}
	args := []string{
		"--id", rec.ID,
		"--exec-file", l.r.binOf(rec), // whose base name is j.ExecName (prepare)
		"--uid", strconv.Itoa(j.UID),
		"--gid", strconv.Itoa(j.GID),
		"--chroot-base-dir", l.base,
		"--cgroup-version", strconv.Itoa(l.cgroupV),
		"--parent-cgroup", l.cfg.ParentCgroup,
		"--new-pid-ns",
		"--resource-limit", "no-file=" + strconv.Itoa(l.cfg.NoFile),
		"--resource-limit", "fsize=" + strconv.FormatInt(fileSizeLimit(rec), 10),
	}
	args = append(args, l.cgroupArgs(rec.Spec)...)
	if rec.Net != nil && rec.Net.NetNS != "" {
		args = append(args, "--netns", rec.Net.NetNS)
	}
	args = append(args, "--", "--api-sock", lp.fcSock(lp.apiSock))
	jp, err := spawn(spawnSpec{bin: j.Jailer, args: args, env: l.r.cfg.Env, dir: lp.dir, out: out, keep: keep})
	if err != nil {
		return nil, fmt.Errorf("%w: start %s: %w", ErrJailer, j.Jailer, err)
	}
	defer jp.close()
	wctx, cancel := context.WithTimeout(ctx, l.r.cfg.ReadyTimeout)
	done, _ := jp.wait(wctx, 0)
	cancel()
	if !done {
		jp.terminate(killWait)
		return nil, fmt.Errorf("%w: %s did not exec firecracker within %s (ReadyTimeout)", ErrJailer, j.Jailer, l.r.cfg.ReadyTimeout)
	}
	if ei := jp.reap(); ei.known && (ei.code != 0 || ei.signal != "") {
		how := "exited with status " + strconv.Itoa(ei.code)
		if ei.signal != "" {
			how = "was killed by signal " + ei.signal
		}
		return nil, fmt.Errorf("%w: %s %s before firecracker started (see its output)", ErrJailer, j.Jailer, how)
	}
	pidFile := filepath.Join(j.Root, j.ExecName+".pid")
	raw, err := os.ReadFile(pidFile)
	if err != nil {
		return nil, fmt.Errorf("%w: read firecracker's pid: %w", ErrJailer, err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(raw)))
	if err != nil || pid <= 0 {
		return nil, fmt.Errorf("%w: %s: not a pid (%q)", ErrJailer, pidFile, raw)
	}
	st, err := readProcStat(pid)
	if err != nil {
		return nil, fmt.Errorf("start firecracker: jailed process %d exited before its API socket answered", pid)
	}
	p, err := attach(pid, st.startTime, "")
	if err != nil {
		return nil, fmt.Errorf("start firecracker: jailed process %d exited before its API socket answered", pid)
	}
	return p, nil
}

// fileSizeLimit is the largest file a jailed firecracker may write: its
// snapshot's memory file, or its largest writable drive, with room.
func fileSizeLimit(rec *vmRecord) int64 {
	limit := int64(rec.Spec.MemoryMiB)<<20 + 64<<20
	for _, d := range specDriveList(rec.Spec) {
		if fi, err := os.Stat(d.Path); err == nil && !d.ReadOnly && fi.Size()+64<<20 > limit {
			limit = fi.Size() + 64<<20
		}
	}
	return limit
}

// bindFile makes host visible at target (created empty) by a bind mount,
// read-only when ro.
func bindFile(host, target string, ro bool) error {
	f, err := os.OpenFile(target, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	f.Close()
	if err := unix.Mount(host, target, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind mount: %w", err)
	}
	if ro {
		if err := unix.Mount("", target, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
			return fmt.Errorf("make bind mount read-only: %w", err)
		}
	}
	return nil
}

// unmount unmounts target; a target that is not mounted (or missing) is
// not an error.
func unmount(target string) error {
	for range 100 {
		err := unix.Unmount(target, unix.UMOUNT_NOFOLLOW)
		switch {
		case err == nil:
			continue // bind mounts may be stacked
		case err == unix.EINVAL || err == unix.ENOENT:
			return nil
		case err == unix.EBUSY:
			return fmt.Errorf("unmount %s: %w", target, err)
		default:
			return fmt.Errorf("unmount %s: %w", target, err)
		}
	}
	return fmt.Errorf("unmount %s: still mounted after 100 unmounts", target)
}

// mountsUnder returns the mount points at or under dir.
func mountsUnder(dir string) ([]string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMount(fields[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			out = append(out, mp)
		}
	}
	return out, sc.Err()
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// removeJailTree removes a jail's directory: every mount under it is
// unmounted first, and nothing is removed while one stays (a removal
// through a mount would reach the user's files).
func removeJailTree(dir string) error {
	mps, err := mountsUnder(dir)
	if err != nil {
		return err
	}
	slices.SortFunc(mps, func(a, b string) int { return len(b) - len(a) }) // deepest first
	for _, m := range mps {
		if err := unmount(m); err != nil {
			return err
		}
	}
	if mps, err := mountsUnder(dir); err != nil || len(mps) > 0 {
		return fmt.Errorf("%s still has mounts %v (%v): not removed", dir, mps, err)
	}
	return os.RemoveAll(dir)
}

// mkdirChroot makes a chroot folder and its parents. The exec-name folder
// above a VM's folder (<base>/<name>) is shared, and a release of another
// VM removes it when it looks empty (removeJailDir): between MkdirAll
// making it and making the VM's folder inside, it can vanish, which
// MkdirAll reports as not existing. Once the VM's folder is in it, it is
// not empty and stays; so trying again settles it (bounded: only a
// removal racing each try can make it fail, and releases are rare).
func mkdirChroot(root string) error {
	var err error
	for range 1000 {
		if err = os.MkdirAll(root, 0o700); !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	return err
}

// removeJailDir removes j's directory (and, when empty, the directory of
// its binary name above it; see mkdirChroot for the launch this can meet).
func (r *Runtime) removeJailDir(j *jailRecord) error {
	if err := removeJailTree(j.Dir); err != nil {
		return err
	}
	os.Remove(filepath.Dir(j.Dir)) // only when empty
	return nil
}

// restoreOwner gives a writable drive back to its owner, if it is still
// the same file.
func restoreOwner(o ownerRecord) error {
	var st unix.Stat_t
	if err := unix.Stat(o.Path, &st); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		return err
	}
	if st.Dev != o.Dev || st.Ino != o.Ino {
		return nil // replaced since: not ours to change
	}
	return os.Chown(o.Path, o.UID, o.GID)
}

// removeCgroup ends every process in the cgroup dir, then removes it. A
// missing cgroup is not an error.
func removeCgroup(dir string) error {
	deadline := time.Now().Add(killWait)
	for {
		raw, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		pids := strings.Fields(string(raw))
		for _, s := range pids {
			pid, err := strconv.Atoi(s)
			if err != nil {
				continue
			}
			if st, err := readProcStat(pid); err == nil {
				killRecorded(pid, st.startTime, "", killWait)
			}
		}
		err = unix.Rmdir(dir)
		switch {
		case err == nil || err == unix.ENOENT:
			return nil
		case err == unix.EBUSY && time.Now().Before(deadline):
			time.Sleep(5 * time.Millisecond)
		default:
			return fmt.Errorf("remove cgroup %s: %w", dir, err)
		}
	}
}

// leaseUID leases the lowest free uid of the range to VM id: the lease
// is a registry record made exclusively, so two runtimes never hand out
// the same uid.
func (r *Runtime) leaseUID(ctx context.Context, id string) (int, error) {
	l, ok := r.launcher.(*jailLauncher)
	if !ok {
		return 0, errors.New("no jailer configured")
	}
	for i := range l.cfg.UIDCount {
		if i%64 == 0 {
			if err := ctx.Err(); err != nil {
				return 0, err
			}
		}
		uid := l.cfg.UIDBase + i
		err := r.reg.Create(kindUID, strconv.Itoa(uid), uidLease{VM: id})
		if err == nil {
			return uid, nil
		}
		if !errors.Is(err, registry.ErrExists) {
			return 0, fmt.Errorf("lease uid %d: %w", uid, err)
		}
	}
	return 0, fmt.Errorf("vm %q: all %d uids from %d are leased to live VMs: %w", id, l.cfg.UIDCount, l.cfg.UIDBase, ErrUIDRangeExhausted)
}

// releaseUID ends VM id's lease of uid (a lease held by another VM is
// left alone).
func (r *Runtime) releaseUID(uid int, id string) error {
	var lease uidLease
	err := r.reg.Get(kindUID, strconv.Itoa(uid), &lease)
	if errors.Is(err, registry.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if lease.VM != id {
		return nil
	}
	if err := r.reg.Delete(kindUID, strconv.Itoa(uid)); err != nil && !errors.Is(err, registry.ErrNotFound) {
		return err
	}
	return nil
}

// sweepJails removes what no record explains (the garbage collection of
// jailed mode): uid leases, chroots and cgroups of VMs whose record does
// not name them, each under its VM's lock (a VM whose lock is held is
// being worked on, and is left alone).
func (r *Runtime) sweepJails() {
	l, ok := r.launcher.(*jailLauncher)
	if !ok {
		return
	}
	owns := func(id string, match func(*jailRecord) bool) (bool, func()) {
		unlock, ok := r.tryLockVM(id)
		if !ok {
			return true, nil
		}
		rec, err := r.load(id)
		if err == nil && rec.Jail != nil && match(rec.Jail) {
			unlock()
			return true, nil
		}
		if err != nil && !errors.Is(err, microvm.ErrNotFound) {
			unlock()
			return true, nil
		}
		if err != nil { // no record: its lock file goes too
			return false, func() { r.reg.RemoveLock("vm-" + id); unlock() }
		}
		return false, unlock
	}
	if uids, err := r.reg.List(kindUID); err == nil {
		for _, s := range uids {
			var lease uidLease
			if r.reg.Get(kindUID, s, &lease) != nil || microvm.ValidateID(lease.VM) != nil {
				continue
			}
			uid, _ := strconv.Atoi(s)
			kept, unlock := owns(lease.VM, func(j *jailRecord) bool { return j.UID == uid })
			if !kept {
				if err := r.releaseUID(uid, lease.VM); err != nil {
					r.log.Error("sweep uid lease", "uid", uid, "vm", lease.VM, "err", err)
				}
				unlock()
			}
		}
	}
	// Cgroups first (they end what runs in a chroot), then chroots.
	parents := map[string]bool{}
	for _, dir := range l.cgroupDirs("x") {
		parents[filepath.Dir(dir)] = true
	}
	for parent := range parents {
		ents, _ := os.ReadDir(parent)
		for _, e := range ents {
			if !e.IsDir() || microvm.ValidateID(e.Name()) != nil {
				continue
			}
			dir := filepath.Join(parent, e.Name())
			kept, unlock := owns(e.Name(), func(j *jailRecord) bool { return slices.Contains(j.Cgroups, dir) })
			if !kept {
				if err := removeCgroup(dir); err != nil {
					r.log.Error("sweep cgroup", "dir", dir, "err", err)
				}
				unlock()
			}
		}
	}
	// Chroots are under <base>/<exec name>/<id>, one exec name per
	// firecracker binary the VMs recorded: every directory of the base
	// whose name the jailer would run is one.
	execDirs, _ := os.ReadDir(l.base)
	for _, x := range execDirs {
		if !x.IsDir() || checkExecName(x.Name()) != nil {
			continue
		}
		execDir := filepath.Join(l.base, x.Name())
		ents, _ := os.ReadDir(execDir)
		for _, e := range ents {
			if !e.IsDir() || microvm.ValidateID(e.Name()) != nil {
				continue
			}
			dir := filepath.Join(execDir, e.Name())
			kept, unlock := owns(e.Name(), func(j *jailRecord) bool { return j.Dir == dir })
			if !kept {
				if err := removeJailTree(dir); err != nil {
					r.log.Error("sweep chroot", "dir", dir, "err", err)
				}
				unlock()
			}
		}
	}
}
