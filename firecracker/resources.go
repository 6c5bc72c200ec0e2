package firecracker

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
)

// This file is the one list of what a VM holds on the host. Every
// resource is described in the VM's record before it is made, and has
// its own undo, which does nothing when the resource was never made or is
// already gone. Create's and Restore's rollback, Stop, a crash, Destroy
// and adoption (reconcile) all release a VM's resources by walking held.
// What no record names (a crash before the record was written) is found
// on the host instead, by sweepJails (uid leases, cgroups, chroots),
// sweepOrphan (processes, the VM directory) and sweepLeases (image leases).

// scope says how long a resource lives.
type scope int

const (
	// scopeProcess: it lives as long as the VM's current firecracker
	// (the process, its page server, its sockets, and for a jailed
	// process its uid, chroot, mounts, changed owners and cgroups).
	scopeProcess scope = iota
	// scopeVM: it lives until the VM is destroyed (its network, its
	// directory), plus everything of scopeProcess.
	scopeVM
)

// resource is one thing a VM holds, with its undo.
type resource struct {
	what string
	// process marks a resource whose failed undo stops the release: a
	// process that survived SIGKILL, a mount or cgroup still in use, a
	// network that only a runtime with networking can release. Nothing
	// after it is undone, so the record keeps describing what is held.
	process bool
	undo    func() error
}

// jailRecord is what a jailed firecracker holds besides the process.
type jailRecord struct {
	// Jailer is the jailer binary and ExecName the name of the binary it
	// ran inside the chroot (the chroot's directory and the pid file are
	// named after it).
	Jailer   string `json:"jailer"`
	ExecName string `json:"exec_name"`
	// UID and GID are the process's own, leased from the configured
	// range (registry kind "uid").
	UID int `json:"uid"`
	GID int `json:"gid"`
	// Dir is the jail's directory <base>/<exec name>/<id>, removed
	// whole; Root is its root/ subdirectory, firecracker's "/".
	Dir  string `json:"dir"`
	Root string `json:"root"`
	// Files maps host paths of the files firecracker opens to their paths
	// inside the chroot.
	Files map[string]string `json:"files,omitempty"`
	// Mounts are bind mounts inside Root (host paths), unmounted before
	// anything is removed.
	Mounts []string `json:"mounts,omitempty"`
	// Owners are files whose owner was changed for the jailed uid (a
	// writable drive), with the owner to give back.
	Owners []ownerRecord `json:"owners,omitempty"`
	// Cgroups are the process's cgroup directories; every process still
	// in them is killed before they are removed.
	Cgroups []string `json:"cgroups,omitempty"`
}

// ownerRecord is a file's original owner.
type ownerRecord struct {
	Path string `json:"path"`
	UID  int    `json:"uid"`
	GID  int    `json:"gid"`
	Dev  uint64 `json:"dev"`
	Ino  uint64 `json:"ino"`
}

// held lists what rec holds in scope s, in the order it is undone. p,
// when not nil, is a handle on rec's firecracker (ended through it rather
// than through the record).
func (r *Runtime) held(rec *vmRecord, p *proc, s scope) []resource {
	var out []resource
	switch {
	case p != nil:
		out = append(out, resource{what: "firecracker process " + strconv.Itoa(p.pid), process: true, undo: func() error {
			defer p.close()
			if !p.terminate(killWait) {
				return fmt.Errorf("firecracker process %d did not exit within %s of SIGKILL", p.pid, killWait)
			}
			return nil
		}})
	case rec.Process != nil:
		pr := *rec.Process
		out = append(out, resource{what: "firecracker process " + strconv.Itoa(pr.PID), process: true, undo: func() error {
			return killRecorded(pr.PID, pr.StartTime, pr.BootID, killWait)
		}})
	}
	if pr := rec.Uffd; pr != nil {
		pr := *pr
		out = append(out, resource{what: "page server " + strconv.Itoa(pr.PID), process: true, undo: func() error {
			return killRecorded(pr.PID, pr.StartTime, pr.BootID, killWait)
		}})
	}
	if j := rec.Jail; j != nil {
		// The cgroups first: whatever runs in them (a process spawned
		// but not yet recorded included) is ended there.
		for _, cg := range j.Cgroups {
			out = append(out, resource{what: "cgroup " + cg, process: true, undo: func() error { return removeCgroup(cg) }})
		}
	}
	l := r.layout(rec)
	socks := []string{l.apiSock, l.uffdSock}
	if rec.VsockPath != "" {
		socks = append(socks, rec.VsockPath)
	}
	for _, sock := range socks {
		out = append(out, resource{what: "socket " + sock, undo: func() error { return removeIfExists(sock) }})
	}
	if j := rec.Jail; j != nil {
		for i := len(j.Mounts) - 1; i >= 0; i-- {
			m := j.Mounts[i]
			out = append(out, resource{what: "mount " + m, process: true, undo: func() error { return unmount(m) }})
		}
		for _, o := range j.Owners {
			out = append(out, resource{what: "owner of " + o.Path, undo: func() error { return restoreOwner(o) }})
		}
		out = append(out, resource{what: "chroot " + j.Dir, undo: func() error { return r.removeJailDir(j) }})
		uid := j.UID
		out = append(out, resource{what: "uid " + strconv.Itoa(uid), undo: func() error { return r.releaseUID(uid, rec.ID) }})
	}
	if s == scopeVM {
		out = append(out, resource{what: "network", process: true, undo: func() error {
			ctx, cancel := context.WithTimeout(context.Background(), r.cfg.APITimeout)
			defer cancel()
			return r.detachNetwork(ctx, rec)
		}})
		out = append(out, resource{what: "vm directory", undo: func() error {
			if err := r.removeVMDir(rec.ID); err != nil {
				return fmt.Errorf("remove vm directory: %w", err)
			}
			return nil
		}})
		for _, name := range rec.ImageLeases {
			out = append(out, resource{what: "lease on image " + name, undo: func() error { return r.images.Release(name, rec.ID) }})
		}
	}
	return out
}

// release undoes what rec holds in scope s (see held). A process that
// survives SIGKILL stops it there: what the process may still use is
// left, and so is the record. On success rec no longer names the
// process-scoped resources.
func (r *Runtime) release(rec *vmRecord, p *proc, s scope) error {
	var errs []error
	for _, res := range r.held(rec, p, s) {
		if err := res.undo(); err != nil {
			errs = append(errs, fmt.Errorf("release %s: %w", res.what, err))
			if res.process {
				return errors.Join(errs...)
			}
		}
	}
	rec.Process, rec.Uffd, rec.Jail = nil, nil, nil
	return errors.Join(errs...)
}

// removeIfExists removes path; a missing file is not an error.
func removeIfExists(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}
