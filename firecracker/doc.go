// Package firecracker is the [microvm.Runtime] that runs each VM in a
// firecracker process of its own. It is for embedders that run real VMs
// on a Linux host: they [Open] it once per state directory and use it as a
// microvm.Runtime and through the root package's optional capabilities.
//
//	rt, err := firecracker.Open(ctx, firecracker.Config{StateDir: "/var/lib/mvm"})
//	vm, err := rt.Create(ctx, "web-1", spec) // spawned and configured
//	vm, err = rt.Start(ctx, "web-1")          // booted
//	rt.Close()                                // the VM keeps running
//
// # Who owns the process
//
// A VM outlives the context of the call that made it, the Runtime, and the
// process that opened the Runtime: firecracker is started in a session of
// its own (setsid), with stdin from /dev/null and stdout/stderr appended to
// a file of the VM directory, never to a pipe, and no context is tied to
// it. The runtime keeps the process's pid, its start time (field 22 of
// /proc/<pid>/stat) and the host's boot id in the VM's record, and works on
// it through a pidfd, so a recycled pid is never signalled. Every mvm
// command is a process of its own and opens a Runtime: the VMs it finds
// are adopted as it meets them (see Adoption), and Close leaves them
// running.
//
// # State directory
//
//	<StateDir>/                  0700
//	  registry/                  VM records (internal/registry): vm/<id>.json, locks/table
//	  vms/<id>/                  0700, one per VM
//	    api.sock                 firecracker's API socket
//	    console.log              guest serial console + firecracker stdout/stderr, which
//	                             carries firecracker's log (bounded)
//	    firecracker.log          firecracker's log, only in VMs made by earlier versions
//	    metrics.json             firecracker's metrics (PUT /metrics), with Config.Metrics (bounded)
//	    metrics.state(.lock)     the VM's metrics totals (package metrics), read by Stats
//	    vsock.sock               host side of the vsock device (when the spec has one without a path)
//	    uffd.sock, uffd.sock.log page server of a VM restored with the uffd backend
//	    disk-<drive id>.ext4     the VM's clone of the image a drive names (Drive.Image)
//	  vms/.trash-*/              a VM directory being removed (swept by Open)
//	  snapshots/                 the snapshot store (internal/snapshot); a snapshot of a VM
//	                             with image drives also keeps disk-<drive id>.ext4, a clone of each
//	  images/                    the image store (package image/store, default Config.Images):
//	                             images/<name>/users/<vm id> are the VMs' leases
//	  jail/<binary>/<id>/root/   jailed mode (default JailerConfig.ChrootBase): the chroot of
//	                             the VM's process, holding api.sock, vsock.sock, uffd.sock,
//	                             metrics.json and links to (or bind mounts of) its images
//	  events/                    the event log (events.log, events.log.1, events.lock) behind Events
//
// In jailed mode the registry also holds kind "uid": one lease per live
// jailed process, naming its VM.
//
// A VM record (registry kind "vm") holds the defaulted spec, the status,
// the current process (pid, start time, boot id), the firecracker version,
// and the name of a multi-step operation while it runs ("create", "start",
// "stop", "snapshot", "restore", "destroy"). Sockets whose absolute path is
// too long for a unix address (108 bytes) are given to firecracker
// relative to the VM directory, its working directory, and dialled through
// /proc/self/fd.
//
// # Operations
//
// Create checks the spec's files (kernel, initrd, drives: they exist, are
// regular files or, for drives, block devices, and open as firecracker
// will open them), makes the VM directory, spawns firecracker in it, waits
// for its socket (woken by inotify, then GET /) and configures it:
// machine, boot source, drives, network interfaces, vsock, MMDS config and
// data (and metrics, with Config.Metrics; firecracker's log is left on its
// stdout, console.log, at its default level). The VM's record is written
// once, fsynced while firecracker is being configured and made visible when
// the configuration succeeded: a Create that returned is durable. Until
// then the VM directory is the mark that a process may exist: a directory
// without a record is an interrupted Create, and recovery ends the
// processes working in it (found by their working directory and command
// line) and removes it. (With a managed network the record is written
// first, so that the network is found too.) If any step fails the process
// is killed and the VM directory and record are removed. Create returns
// no error but a [*microvm.OpError]: it names the step, keeps firecracker's
// status code and fault_message (in a [*microvm.BackendError]; the message
// is trimmed to a sentence on one line), matches the sentinel of its cause
// (microvm.ErrInvalidSpec, ErrInvalidID, ErrAlreadyExists, ErrBackend,
// ErrExited, ...) and carries the last lines firecracker wrote in its
// Detail, never in its one-line message. Start boots a created VM (InstanceStart), or
// spawns and configures a fresh process for a stopped or failed one. Stop
// sends Ctrl-Alt-Del (x86, running VMs), waits, then SIGTERM, then
// SIGKILL; a stopped VM holds no process. Pause and Resume are PATCH /vm.
// Snapshot pauses a running VM, writes into the snapshot store, resumes
// the VM (also on failure) and commits. Restore verifies the snapshot,
// spawns firecracker, checks the version can load it and loads it, with
// the memory file mapped or served by a uffd page server (cmd/mvm-uffd).
// Destroy kills the process, confirms its exit through the pidfd, and
// removes the directory and the record.
//
// # Crash detection
//
// An open Runtime watches the process of every VM it created, adopted or
// read: a goroutine per VM waits on the pidfd through Go's poller (no
// thread is blocked), unrelated to any request. A process that exits
// unasked turns its VM failed, within milliseconds, with the exit status
// or signal (known for processes this process started; firecracker's own
// exit codes are named, e.g. 148: a system call its seccomp filter
// forbids) in VM.LastError and the last console lines in
// VM.LastErrorDetail; a created VM whose process dies stays
// created, and Start spawns a new one. A process this process started
// that exits with status 0 is a guest that shut itself down (Firecracker
// exits when its guest powers off or resets): the VM turns stopped, its
// leftovers removed as by Stop, with no LastError (the runtime's log says
// so at level Info); but Firecracker v1.7 also exits 0 after KVM stopped a
// vCPU (KVM_EXIT_INTERNAL_ERROR, as on kvm-pvm), which its last lines say:
// that VM turns failed, with that reason. The exit status of an adopted
// process (started by another process, so not our child) cannot be read:
// its end, clean or not, turns the VM failed ("exit status unknown"). The
// children of this process are reaped even when they exit after every
// Runtime closed (a process-wide reaper, see reaper.go), and a Runtime
// opened later learns their exit status.
//
// # Adoption
//
// Adoption is lazy: Open reads no record and probes no VM, so a command
// about one VM costs the same with one VM or thousands in the state
// directory. Open only sweeps what no record explains (VM directories of
// interrupted Creates, directories left half-deleted by a Destroy,
// temporary record files of writers that died, each under its VM's lock),
// which costs three directory reads. A VM is reconciled with the host when this
// Runtime first meets it: an operation on it, Get, or List.
//
// A record whose process is alive (same pid, start time and boot) is
// adopted as it is and watched; an operation or Get also asks its API for
// its state first (GET /: "Not started" is created, "Running", "Paused")
// and reconciles a disagreement, List does not (it reads the records and
// checks the processes; one request per VM would make listing slow).
// Otherwise, under the VM's lock: a VM whose process died while no
// runtime watched turns failed and its leftovers (sockets, page server)
// are removed; a state changed behind the record's back (a VM paused
// through the API) is taken from firecracker; an operation whose process
// died midway is finished or undone (an interrupted Create or Restore is
// removed, with any firecracker or page server it started before
// recording it, found by its working directory or command line; a Stop is
// completed; a Snapshot resumes the VM it paused, once firecracker
// answers again; a Start, Pause or Resume, marked before its API call,
// takes the state firecracker reports, also under List). A VM whose lock
// another process holds is left to that process. cmd/mvm's TestChaos
// kills mvm commands at random instants and checks all of this against
// the host.
//
// Crash detection therefore covers the VMs this Runtime created or met. A
// long-running user that wants every VM watched (and checked against its
// API) from the start calls [Runtime.AdoptAll] once after Open; a List
// watches every VM it lists. See BenchmarkOpen.
//
// # Concurrency
//
// Every operation on a VM holds that VM's lock, an open-file-description
// lock on a byte of the registry's one lock table (registry/locks/table;
// no file per id), which excludes other goroutines and other processes
// alike; operations on different VMs run in parallel. The
// id of a new VM is reserved by creating its record atomically under the
// lock, so of concurrent Creates of one id exactly one succeeds and no
// process leaks. Restore and DeleteSnapshot take the lock "snap-<id>"
// while they check and change which VMs use the snapshot.
//
// # Drive images
//
// A writable drive image belongs to one live VM (one whose firecracker
// runs: created, running or paused). Create and Start flock(2) each image
// of the spec, exclusively for a writable drive and shared for a
// read-only one, on a descriptor the new firecracker inherits, so the
// lock lives exactly as long as that process and nothing is recorded that
// could go stale. A Create or Start that would attach an image another
// live VM writes, or write one another live VM reads, fails with
// [ErrImageInUse] naming that VM (after waiting up to a second for a
// process that is exiting); read-only sharing is allowed. Files are
// compared by device and inode, not by path. Restore takes no lock: the
// clones of one snapshot share its drives, as the snapshot recorded them.
//
// A drive that names an image of the store (Drive.Image) instead of a
// path is the VM's own: Create records a lease on the image in the VM's
// record, takes it (store.Use), clones the image into the VM directory
// (image.Clone: a reflink, else a sparse copy, grown to Drive.SizeBytes)
// and reports the clone as the drive's Path. Destroy, an undone Create and
// recovery release the lease with the VM's other resources; Open releases
// leases of VMs that have no record. Firecracker is given the clone by its
// name relative to the VM directory (its working directory; in jailed
// mode, the chroot's drive-<id>), so a snapshot records a name that each
// restored VM resolves to its own clone: Snapshot keeps a clone of each
// such disk (taken while the vCPUs are paused) in the snapshot, and
// Restore clones that copy into the new VM's directory. Two VMs never
// share a writable clone. (The snapshot's disk copies are not in its
// manifest's file list, so Verify does not hash them.)
//
// # Output files
//
// console.log, metrics.json (and the firecracker.log of older VMs) are
// each bounded by Config.ConsoleMaxBytes (default 2 MiB): past it, the
// oldest half is dropped in place, without copying and without racing
// firecracker's writes (fallocate COLLAPSE_RANGE for the O_APPEND console, PUNCH_HOLE for
// files firecracker writes at its own offset, and for file systems without
// COLLAPSE_RANGE such as tmpfs). Trimming runs while a Runtime is open, for
// the VMs it watches; the files may exceed the bound between two runtimes
// (two mvm commands) and are brought back when a runtime next adopts the
// VM.
//
// # Networking
//
// Unmanaged interfaces (an existing TAP device named by HostDevName) are
// passed to firecracker as they are. A managed interface (HostDevName
// empty; at most one per VM) needs a [Network] in Config; package
// network/fcnet adapts package network's Manager to it. Without one,
// Create and Restore refuse it with [microvm.ErrUnsupported], and Destroy
// refuses a VM that holds one (its network would leak).
//
// Attach runs before the VM's first process is spawned (Create, Restore;
// each restored clone gets a network of its own) and again before a cold
// Start; Detach when the VM is destroyed or its creation undone. The
// attachment is kept in the VM's record and shown in VM.Backend.Network.
// Firecracker is spawned inside the attachment's network namespace (from
// a thread switched into it and back), where it opens the TAP by name.
// The managed interface is configured first, so a Linux guest names it
// eth0, the device of the ip= argument appended to the kernel command
// line.
//
// A restore needs no network_overrides: package network gives every slot
// the same TAP name, guest address and MAC, so the TAP the snapshot
// recorded exists, under that name, in each clone's own namespace.
//
// The attachment's facts for the guest (network.Slot.Metadata: interface,
// mac, ip, prefix_length, netmask, gateway, host_ip) are put in the MMDS
// data store at "mvm"/"network" ([MMDSKey], [MMDSNetworkKey]), e.g.
//
//	curl -H "X-metadata-token: $TOKEN" http://169.254.169.254/mvm/network
//
// If the spec configures MMDS, the facts are merged into its data (a key
// "mvm" in the data must then be a JSON object; "mvm"."network" is the
// runtime's), on the interfaces and with the version the spec chose. If
// it does not, the runtime enables MMDS version 2 on the managed interface
// at the default address (169.254.169.254) with just the facts: a guest
// agent can always find them, and V2's session tokens keep them from
// simple request forgery. The spec is not changed (it shows no MMDS). The
// data store is written after every boot and every snapshot load (MMDS
// data is not part of a snapshot), so each clone sees its own host_ip.
//
// # Live updates
//
// The runtime offers the root package's optional capabilities
// (microvm.EgressUpdater, microvm.RateLimitUpdater, microvm.Renamer):
// [Runtime.SetEgressPolicy] replaces the managed interface's egress
// firewall (through a Network that implements [PolicyUpdater]), in any
// status; [Runtime.UpdateRateLimits] changes the rate limiters of drives
// and network interfaces of a running or paused VM (PATCH /drives/{id},
// PATCH /network-interfaces/{id}), reading and writing them under the VM's
// lock. Both check their input with the rules of microvm.Spec.Validate and
// store the result in the VM's spec, so a restart, and a snapshot's
// clones, keep it. [Runtime.Rename] renames a created, stopped or paused
// VM with its process and, through a Network that implements
// [NetworkRenamer], its managed network.
//
// Each VM's record keeps the firecracker binary it was created (or
// restored) with, by path, and the version it reported; every later
// process of the VM runs that binary, whatever Config.FirecrackerBin a
// later Runtime has (VM.Backend.Binary shows it).
//
// At Open, a Network that implements [Cleaner] is asked to remove what it
// holds for VMs that have no record (and to repair the networks of those
// that do).
//
// # Jailed mode
//
// With Config.Jailer, every firecracker is started through Firecracker's
// jailer (see JailerConfig): in <ChrootBase>/<binary name>/<id>/root, as
// a uid and gid leased for the VM from a range (registry kind "uid", made
// exclusively: no two live VMs share one), in a new PID namespace, with
// seccomp, resource limits and cgroups (<ParentCgroup>/<id> under each
// controller) bounding CPU, memory and tasks. The jailer exits once it
// has started firecracker; the runtime reads firecracker's pid from
// <root>/<binary name>.pid and, being a child subreaper, waits for and
// reaps it like a direct child. Its sockets, metrics and snapshot files
// live in the chroot; kernel, initrd, drives and a restore's snapshot are
// hard-linked into it, or bind-mounted from another file system (writable
// drives only when the spec says so, chowned to the VM's uid while its
// process lives and given back after).
//
// A jailed VM's record keeps the jailer it was created (or restored)
// with, by path and version, beside its firecracker binary and that
// binary's version (VM.Backend.Jailer, Binary): every later jailed
// process of the VM (Start after Stop or a crash, recovery) runs that
// pair, whatever jailer and firecracker a later Runtime has, in
// <ChrootBase>/<its firecracker's name>/<id>. Open refuses a jailer and a
// firecracker of different releases (their --version must be equal),
// naming both versions. Before a launch, each binary of the recorded pair
// must still exist and report its recorded version; otherwise the launch
// fails with ErrBinaryChanged, naming the file and both versions, before
// anything is made (a direct VM's binary is only looked up by path: a
// binary replaced in place runs). JailerConfig.SkipVersionCheck accepts
// both mismatches. A record that names no jailer (written before the
// jailer was kept, or of a VM that ran directly) gets the runtime's
// jailer, paired with its recorded firecracker, which must be of the
// jailer's release; the pair is then recorded. A restored clone is a new
// VM: it gets the restoring runtime's pair. A Runtime without a jailer
// refuses to start a VM whose record names one (ErrJailer): it would run
// outside its sandbox.
//
// A jailed process cannot hold the flocks of a direct one (the jailer
// closes what it inherits): writable images are checked against the
// records of live VMs instead, under a registry lock.
//
// # What a VM holds
//
// Everything a VM holds on the host is listed in one place (resources.go,
// held): its firecracker and page server, its cgroups (every process in
// them is ended first, one not yet recorded included), its sockets, bind
// mounts (unmounted before anything is removed), changed owners, chroot
// and uid lease, and, for the VM's life, its network and directory. Each
// has its own undo, which does nothing for a resource never made, and
// each is described in the record before it is made; Create's and
// Restore's rollback, Stop, a crash, Destroy and recovery all walk it.
// Open also removes uid leases, cgroups and chroots that no record names.
//
// The runtime's code never builds a path it gives firecracker: vmPaths
// gives each path as the host sees it and as firecracker sees it (the
// same path for a direct launch, the path inside the chroot for a jailed
// one), and the launcher (direct or jailed) is the one seam between them.
//
// # Tests on real KVM
//
// The tests run against the stand-in firecracker (internal/fcstandin).
// Where /dev/kvm opens read-write, TestKVMConformance and TestKVMGuest (and
// TestKVMNetwork in network/fcnet) boot real guests under each firecracker-v*
// binary of ../shared/firecracker, with its vmlinux-6.1 and the agent image
// built by package image (otherwise they are skipped):
//
//	go test -run TestKVM -v ./firecracker/ ./network/fcnet/
//
// MVM_FIRECRACKER_BIN, MVM_KERNEL and MVM_ROOTFS (conformance only) replace
// the binaries, the kernel and the image; MVM_KVM_MEMORY_MIB sets the guest
// memory (default 128). Root file systems are attached read-only (the
// suites boot many VMs from one image).
package firecracker
