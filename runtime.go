package microvm

import (
	"context"
	"time"
)

// Runtime runs microVMs. Every method takes a context that bounds that call
// only; VMs outlive it. Methods are safe for concurrent use: calls on
// different VMs proceed in parallel, calls on one VM are serialised.
//
// Every method validates its ids first ([ErrInvalidID]) and its options
// ([ErrInvalidArgument]); Create validates the spec ([ErrInvalidSpec]).
// Unknown VM ids give [ErrNotFound]; unknown snapshot ids
// [ErrSnapshotNotFound]. A refused transition gives a [*TransitionError];
// see the package documentation for the table. After Close every method
// returns [ErrClosed].
//
// A failed call leaves no half-made VM or snapshot behind: the VM keeps its
// previous status (or is not created), unless its process died, in which
// case it is failed.
type Runtime interface {
	// Create makes a VM from spec, configured but not booted (created).
	// The spec is defaulted ([Spec.WithDefaults]), its relative paths are
	// resolved against the caller's working directory ([Spec.AbsPaths]),
	// and it is validated; the stored spec is the defaulted, absolute one.
	Create(ctx context.Context, id string, spec Spec) (VM, error)
	// Start boots a created, stopped or failed VM (running).
	Start(ctx context.Context, id string) (VM, error)
	// Stop shuts a running or paused VM down (stopped): it asks the guest
	// to shut down, waits up to the timeout, then ends the VM's process.
	// A nil opts uses [DefaultStopTimeout].
	Stop(ctx context.Context, id string, opts *StopOptions) (VM, error)
	// Pause pauses a running VM's vCPUs (paused).
	Pause(ctx context.Context, id string) (VM, error)
	// Resume resumes a paused VM (running).
	Resume(ctx context.Context, id string) (VM, error)
	// Snapshot saves a running or paused VM as snapshotID. A running VM is
	// paused for the snapshot and resumed after it, also when the snapshot
	// fails. A nil opts takes a full snapshot. Snapshots outlive their VM.
	Snapshot(ctx context.Context, id, snapshotID string, opts *SnapshotOptions) (Snapshot, error)
	// Restore makes a new VM, newID, from a snapshot. It runs unless
	// opts.Paused. Many VMs may be restored from one snapshot.
	Restore(ctx context.Context, newID, snapshotID string, opts *RestoreOptions) (VM, error)
	// Destroy ends the VM's process, releases all it held and removes its
	// record. It returns the VM's last view with status destroyed. A
	// second Destroy returns ErrNotFound. Snapshots of the VM are kept.
	Destroy(ctx context.Context, id string) (VM, error)
	// Get returns the VM's current view.
	Get(ctx context.Context, id string) (VM, error)
	// List returns every VM, sorted by id.
	List(ctx context.Context) ([]VM, error)
	// Snapshots returns the snapshots taken from vmID (any VM when vmID is
	// ""), oldest first. The VM need not exist any more.
	Snapshots(ctx context.Context, vmID string) ([]Snapshot, error)
	// DeleteSnapshot removes a snapshot and its files. It refuses with
	// [ErrSnapshotInUse] while a VM depends on it (a VM restored from it
	// that still reads its memory, or a diff snapshot whose parent it is),
	// unless opts.Force.
	DeleteSnapshot(ctx context.Context, snapshotID string, opts *DeleteSnapshotOptions) error
	// Logs returns up to lines of the newest lines of the VM's console
	// and log (all that is kept when lines <= 0), oldest first.
	Logs(ctx context.Context, id string, lines int) ([]string, error)
	// Close releases the runtime's own resources. VMs keep running; a new
	// runtime over the same state adopts them.
	Close() error
}

// VM is the read view of a microVM. It is a copy: changing it changes
// nothing.
type VM struct {
	// ID is the VM's id.
	ID string `json:"id"`
	// Status is where the VM is in its lifecycle.
	Status Status `json:"status"`
	// Spec is the VM's defaulted spec.
	Spec Spec `json:"spec"`
	// Snapshots lists the ids of snapshots taken from this VM that still
	// exist, oldest first.
	Snapshots []string `json:"snapshots,omitempty"`
	// RestoredFrom is the snapshot the VM was restored from, if any.
	RestoredFrom string `json:"restored_from,omitempty"`
	// CreatedAt and UpdatedAt are when the VM was created and when its
	// status last changed.
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
	// LastError says why the VM failed (status failed), or what the last
	// failed operation on it was.
	LastError string `json:"last_error,omitempty"`
	// LastErrorDetail is what the hypervisor and the guest console wrote
	// last before the failure LastError reports, oldest first, when the
	// runtime read it (the Detail of its [*OpError]).
	LastErrorDetail []string `json:"last_error_detail,omitempty"`
	// Backend holds what the runtime knows of the VM's host side.
	Backend Backend `json:"backend"`
}

// Backend describes the host side of a VM. Fields a runtime does not have
// are left empty.
type Backend struct {
	// Runtime names the runtime: "firecracker" or "memory".
	Runtime string `json:"runtime"`
	// PID is the hypervisor process, 0 when none runs.
	PID int `json:"pid,omitempty"`
	// Dir is the VM's directory on the host.
	Dir string `json:"dir,omitempty"`
	// APISocket is the hypervisor's API socket.
	APISocket string `json:"api_socket,omitempty"`
	// ConsoleLog is the file capturing the guest's serial console.
	ConsoleLog string `json:"console_log,omitempty"`
	// Log is the hypervisor's own log file.
	Log string `json:"log,omitempty"`
	// Version is the hypervisor's version.
	Version string `json:"version,omitempty"`
	// Binary is the hypervisor binary the VM runs with: the one it was
	// created (or restored) with, which later starts use too.
	Binary string `json:"binary,omitempty"`
	// Jailer is the jailer a jailed VM runs with, paired with Binary:
	// the one it was created (or restored, or first started jailed)
	// with, which later starts use too. Empty for a VM never run jailed.
	Jailer string `json:"jailer,omitempty"`
	// VsockPath is the host unix socket of the vsock device.
	VsockPath string `json:"vsock_path,omitempty"`
	// Network describes the managed network interface, if any.
	Network *NetworkInfo `json:"network,omitempty"`
	// Jail describes the jail of a jailed hypervisor process, if any.
	Jail *JailInfo `json:"jail,omitempty"`
}

// JailInfo describes where a jailed hypervisor process runs.
type JailInfo struct {
	// UID and GID are the process's user and group, unique to the VM
	// among live VMs.
	UID int `json:"uid"`
	GID int `json:"gid"`
	// Chroot is the host path of the process's root directory.
	Chroot string `json:"chroot,omitempty"`
	// Cgroups are the process's cgroup directories.
	Cgroups []string `json:"cgroups,omitempty"`
}

// NetworkInfo describes a VM's managed network.
type NetworkInfo struct {
	// NetNS is the path of the VM's network namespace.
	NetNS string `json:"netns,omitempty"`
	// TAP is the TAP device inside the namespace.
	TAP string `json:"tap,omitempty"`
	// GuestIP, Gateway and GuestMAC are the guest's own settings (the
	// same in every VM).
	GuestIP  string `json:"guest_ip,omitempty"`
	Gateway  string `json:"gateway,omitempty"`
	GuestMAC string `json:"guest_mac,omitempty"`
	// HostIP is the VM's unique address, through which the host reaches
	// the guest.
	HostIP string `json:"host_ip,omitempty"`
}

// SnapshotType is the kind of a snapshot.
type SnapshotType string

// The snapshot types.
const (
	// SnapshotFull saves all guest memory.
	SnapshotFull SnapshotType = "full"
	// SnapshotDiff saves the memory pages written since the parent
	// snapshot; the VM must track dirty pages (Spec.TrackDirtyPages).
	SnapshotDiff SnapshotType = "diff"
)

// Snapshot describes a saved VM.
type Snapshot struct {
	// ID is the snapshot's id; snapshot ids are unique per runtime.
	ID string `json:"id"`
	// VMID is the VM it was taken from, by the id it had then: a
	// snapshot is an artifact of its own, which a later rename of the VM
	// (see [Renamer]) does not change.
	VMID string `json:"vm_id"`
	// Type is full or diff.
	Type SnapshotType `json:"type"`
	// Parent is the snapshot a diff snapshot applies to.
	Parent string `json:"parent,omitempty"`
	// CreatedAt is when it was taken.
	CreatedAt time.Time `json:"created_at"`
	// Spec is the VM's spec when it was taken.
	Spec Spec `json:"spec"`
	// Size is the bytes the snapshot's files take on disk.
	Size int64 `json:"size"`
	// HypervisorVersion is the version of the hypervisor that made it.
	HypervisorVersion string `json:"hypervisor_version,omitempty"`
	// Dir is where its files are, when it has files.
	Dir string `json:"dir,omitempty"`
}

// StopOptions tunes Stop.
type StopOptions struct {
	// Timeout is how long to wait for the guest to shut down before its
	// process is ended. 0 means [DefaultStopTimeout]; negative values are
	// refused.
	Timeout time.Duration
}

// SnapshotOptions tunes Snapshot.
type SnapshotOptions struct {
	// Type is full (the default, when empty) or diff.
	Type SnapshotType
	// Parent is the snapshot a diff snapshot applies to. Default: the
	// newest snapshot of the VM. Only for diff snapshots.
	Parent string
}

// MemoryBackend selects how a restored VM gets its memory.
type MemoryBackend string

// The memory backends.
const (
	// MemoryBackendDefault lets the runtime choose.
	MemoryBackendDefault MemoryBackend = ""
	// MemoryBackendFile maps the snapshot's memory file.
	MemoryBackendFile MemoryBackend = "file"
	// MemoryBackendUffd serves memory on demand through userfaultfd, with
	// background prefetch.
	MemoryBackendUffd MemoryBackend = "uffd"
)

// RestoreOptions tunes Restore.
type RestoreOptions struct {
	// Paused leaves the restored VM paused instead of running.
	Paused bool
	// MemoryBackend chooses how the VM's memory is loaded.
	MemoryBackend MemoryBackend
	// SkipVerify skips checking the snapshot's checksums before loading
	// it. Faster for large snapshots; a corrupt file is then found only
	// by the hypervisor, or not at all.
	SkipVerify bool
	// Labels replace the snapshot spec's labels when not nil.
	Labels map[string]string
}

// DeleteSnapshotOptions tunes DeleteSnapshot.
type DeleteSnapshotOptions struct {
	// Force deletes the snapshot even while VMs depend on it.
	Force bool
}
