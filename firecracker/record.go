package firecracker

import (
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"time"

	microvm "github.com/mvm-dev/microvm"
	"github.com/mvm-dev/microvm/internal/registry"
)

// kindVM is the registry kind of VM records.
const kindVM = "vm"

// Operations recorded in vmRecord.Op while they run. An operation that
// spans several steps writes its name first and clears it last; a record
// that still names one when nobody holds the VM's lock was left by a
// process that died mid-way, and recovery (see reconcile) finishes or
// undoes it.
const (
	opCreate   = "create"
	opRestore  = "restore"
	opStart    = "start"
	opStop     = "stop"
	opSnapshot = "snapshot"
	opDestroy  = "destroy"
	opRename   = "rename"
)

// procRecord identifies a process across runtimes: pid, start time and
// boot id together cannot be reused.
type procRecord struct {
	PID       int    `json:"pid"`
	StartTime uint64 `json:"start_time"`
	BootID    string `json:"boot_id,omitempty"`
}

func recordOf(p *proc) *procRecord {
	return &procRecord{PID: p.pid, StartTime: p.startTime, BootID: bootID()}
}

func (pr *procRecord) same(p *proc) bool {
	return pr != nil && p != nil && pr.PID == p.pid && pr.StartTime == p.startTime
}

// vmRecord is the durable state of one VM: registry kind "vm", id = VM id.
// It holds intent and bookkeeping, never liveness: whether the recorded
// process still runs is checked against the host every time it matters.
type vmRecord struct {
	ID     string         `json:"id"`
	Spec   microvm.Spec   `json:"spec"`
	Status microvm.Status `json:"status"`
	// Op is the multi-step operation in progress, "" when none.
	Op string `json:"op,omitempty"`
	// OpSnapshot is the snapshot being written while Op is "snapshot".
	OpSnapshot string `json:"op_snapshot,omitempty"`
	// RenameTo (in the VM's record under its old id) and RenameFrom (in
	// the record under its new id) pair the two records while Op is
	// "rename"; see rename.go.
	RenameTo   string    `json:"rename_to,omitempty"`
	RenameFrom string    `json:"rename_from,omitempty"`
	CreatedAt  time.Time `json:"created_at"`
	UpdatedAt  time.Time `json:"updated_at"`
	LastError  string    `json:"last_error,omitempty"`
	// LastErrorDetail is firecracker's last output when LastError was
	// recorded (the Detail of its *microvm.OpError).
	LastErrorDetail []string `json:"last_error_detail,omitempty"`
	// RestoredFrom is the snapshot the VM was restored from (kept for
	// the VM's life).
	RestoredFrom string `json:"restored_from,omitempty"`
	// MemorySnapshot is the snapshot whose memory the VM's current
	// process maps; it is cleared when that process ends (a later Start
	// boots from the kernel).
	MemorySnapshot string                `json:"memory_snapshot,omitempty"`
	MemoryBackend  microvm.MemoryBackend `json:"memory_backend,omitempty"`
	// DiffBase is the snapshot since which the current process tracks
	// dirty pages (its latest snapshot, or the one it was restored from):
	// the only valid parent of a diff snapshot.
	DiffBase string `json:"diff_base,omitempty"`
	// Process is the firecracker process, nil when none runs.
	Process *procRecord `json:"process,omitempty"`
	// Uffd is the page server of a VM restored with the uffd backend.
	Uffd *procRecord `json:"uffd,omitempty"`
	// Version is the firecracker version of the current (or last)
	// process.
	Version string `json:"version,omitempty"`
	// Binary is the absolute path of the firecracker binary the VM was
	// created or restored with; every later process of the VM runs it.
	// Empty in records written before it was kept: the runtime's binary.
	Binary string `json:"binary,omitempty"`
	// Jailer is the jailer a jailed VM was created (or restored) with,
	// paired with Binary: every later jailed process of the VM runs this
	// pair (see jailLauncher.binaries). Nil for a VM whose processes all
	// ran directly, and in records written before it was kept: the
	// first jailed launch then pairs the runtime's jailer with Binary and
	// records it.
	Jailer *jailerBinary `json:"jailer,omitempty"`
	// VsockPath is the host socket of the vsock device, if any.
	VsockPath string `json:"vsock_path,omitempty"`
	// Net is what the network manager set up for the managed interface,
	// if any.
	Net *NetworkAttachment `json:"net,omitempty"`
	// Jail is what the jailed launch of the current process holds (its
	// uid, chroot, mounts, cgroups), written before any of it is made;
	// nil for a direct launch. See resources.go.
	Jail *jailRecord `json:"jail,omitempty"`
	// ImageLeases are the images of the store the VM holds a lease on
	// (store.Use), each written here before the lease is taken. See
	// imagedisk.go.
	ImageLeases []string `json:"image_leases,omitempty"`
}

// jailerBinary is the jailer a VM runs with and the versions of its pair
// when it was recorded. An empty version is one that was not known (a
// pair accepted with JailerConfig.SkipVersionCheck whose firecracker did
// not report one): it is not checked.
type jailerBinary struct {
	// Path is the absolute path of the jailer.
	Path string `json:"path"`
	// Version is what `jailer --version` reported ("1.7.0" for
	// "Jailer v1.7.0").
	Version string `json:"version"`
	// FirecrackerVersion is what `firecracker --version` of the VM's
	// Binary reported.
	FirecrackerVersion string `json:"firecracker_version,omitempty"`
}

// vmPaths are the paths of one VM in two views: as the host sees them
// (the fields) and as its firecracker sees them (fc, fcSock). The VM's
// directory <state>/vms/<id> holds its output files; its sockets and
// metrics live in sockDir: the VM directory for a direct launch, the
// chroot's root for a jailed one. Nothing outside this type and the
// launchers builds a path that firecracker is given.
type vmPaths struct {
	dir, console, log string
	// root is the host path of the directory firecracker sees as "/"
	// ("" for a direct launch: it sees the host's).
	root                                       string
	sockDir, apiSock, metrics, vsock, uffdSock string
	// files maps the host path of a file firecracker opens (kernel,
	// drives, snapshot files) to its path inside root.
	files map[string]string
}

// fcSock is firecracker's view of a socket (or metrics file) in sockDir:
// inside a chroot, its path from the chroot's root; otherwise the host
// path when it fits in a unix socket address, else its name relative to
// the VM directory (firecracker's working directory).
func (p vmPaths) fcSock(host string) string {
	if p.root != "" {
		return "/" + filepath.Base(host)
	}
	if len(host) < maxSockPath {
		return host
	}
	return filepath.Base(host)
}

// fcJailFile is firecracker's view of a file the runtime placed in the
// chroot (the host path itself for a direct launch).
func (p vmPaths) fcJailFile(host string) string {
	if p.root == "" {
		return host
	}
	return "/" + filepath.Base(host)
}

// fcFile is firecracker's view of a file it opens by a host path.
func (p vmPaths) fcFile(host string) string {
	if p.root == "" || host == "" {
		return host
	}
	if f, ok := p.files[host]; ok {
		return f
	}
	return host
}

// Names inside a VM directory.
const (
	fileAPISock  = "api.sock"
	fileConsole  = "console.log"
	fileLog      = "firecracker.log"
	fileMetrics  = "metrics.json"
	fileVsock    = "vsock.sock"
	fileUffdSock = "uffd.sock"
)

// paths returns the paths of VM id as a direct launch lays them out.
func (r *Runtime) paths(id string) vmPaths {
	dir := filepath.Join(r.vmsDir, id)
	return vmPaths{
		dir:      dir,
		console:  filepath.Join(dir, fileConsole),
		log:      filepath.Join(dir, fileLog),
		sockDir:  dir,
		apiSock:  filepath.Join(dir, fileAPISock),
		metrics:  filepath.Join(dir, fileMetrics),
		vsock:    filepath.Join(dir, fileVsock),
		uffdSock: filepath.Join(dir, fileUffdSock),
	}
}

// layout returns the paths of rec's current (or next) process: those of
// paths, moved into the chroot when rec's process is jailed.
func (r *Runtime) layout(rec *vmRecord) vmPaths {
	p := r.paths(rec.ID)
	if j := rec.Jail; j != nil && j.Root != "" {
		p.root, p.sockDir = j.Root, j.Root
		p.apiSock = filepath.Join(j.Root, fileAPISock)
		p.metrics = filepath.Join(j.Root, fileMetrics)
		p.vsock = filepath.Join(j.Root, fileVsock)
		p.uffdSock = filepath.Join(j.Root, fileUffdSock)
		p.files = j.Files
	}
	return p
}

// load reads the record of id; an unknown id gives microvm.ErrNotFound.
func (r *Runtime) load(id string) (*vmRecord, error) {
	var rec vmRecord
	err := r.reg.Get(kindVM, id, &rec)
	if errors.Is(err, registry.ErrNotFound) {
		return nil, fmt.Errorf("vm %q: %w", id, microvm.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("vm %q: read record: %w", id, err)
	}
	return &rec, nil
}

// save writes rec, stamping UpdatedAt.
func (r *Runtime) save(rec *vmRecord) error {
	rec.UpdatedAt = time.Now().UTC()
	if err := r.reg.Put(kindVM, rec.ID, rec); err != nil {
		return fmt.Errorf("vm %q: write record: %w", rec.ID, err)
	}
	return nil
}

// mark writes rec atomically but without fsync, for what only matters
// while the VM's process lives: the operation it starts (rec.Op), which is
// for recovery after the process running the operation dies (that leaves
// the page cache intact), or a running/paused status. A crash of the host
// ends the VM's processes too, and the record it leaves (with or without
// the change) is recovered like any VM whose process died.
func (r *Runtime) mark(rec *vmRecord) error {
	rec.UpdatedAt = time.Now().UTC()
	if err := r.reg.PutUnsynced(kindVM, rec.ID, rec); err != nil {
		return fmt.Errorf("vm %q: write record: %w", rec.ID, err)
	}
	return nil
}

func nowUTC() time.Time { return time.Now().UTC() }

// setStatus changes rec's status and clears the last error of a
// successful transition into a good state.
func (rec *vmRecord) setStatus(s microvm.Status) {
	rec.Status = s
	if s != microvm.StatusFailed {
		rec.LastError, rec.LastErrorDetail = "", nil
	}
}

// view builds the read view of rec.
func (r *Runtime) view(rec *vmRecord, snaps []string) microvm.VM {
	p := r.layout(rec)
	vm := microvm.VM{
		ID:              rec.ID,
		Status:          rec.Status,
		Spec:            rec.Spec.Clone(),
		Snapshots:       snaps,
		RestoredFrom:    rec.RestoredFrom,
		CreatedAt:       rec.CreatedAt,
		UpdatedAt:       rec.UpdatedAt,
		LastError:       rec.LastError,
		LastErrorDetail: append([]string(nil), rec.LastErrorDetail...),
		Backend: microvm.Backend{
			Runtime:    "firecracker",
			Dir:        p.dir,
			APISocket:  p.apiSock,
			ConsoleLog: p.console,
			// Firecracker's log goes to its stdout (configureOutput).
			Log:       p.console,
			Version:   rec.Version,
			Binary:    r.binOf(rec),
			VsockPath: rec.VsockPath,
		},
	}
	if rec.Jailer != nil {
		vm.Backend.Jailer = rec.Jailer.Path
	}
	if rec.Process != nil {
		vm.Backend.PID = rec.Process.PID
	}
	if j := rec.Jail; j != nil {
		vm.Backend.Jail = &microvm.JailInfo{UID: j.UID, GID: j.GID, Chroot: j.Root, Cgroups: slices.Clone(j.Cgroups)}
	}
	if rec.Net != nil {
		n := rec.Net.Info
		vm.Backend.Network = &n
	}
	return vm
}

// binOf is the firecracker binary of rec's VM: the one it was created
// with, or the runtime's for a record that does not name one.
func (r *Runtime) binOf(rec *vmRecord) string {
	if rec.Binary != "" {
		return rec.Binary
	}
	return r.bin
}

// setError records a failed operation's error, one line, and its detail.
func (rec *vmRecord) setError(oe *microvm.OpError) {
	rec.LastError, rec.LastErrorDetail = oe.Error(), oe.Detail
}
