package firecracker

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	microvm "github.com/mvm-dev/microvm"
	"github.com/mvm-dev/microvm/registry"
)

// A Create without a managed network writes no record until the VM is
// configured: the VM directory, made before the process is spawned, is
// the mark that a process may exist. Recovery therefore treats a VM
// directory that no record explains as an interrupted Create: it ends
// every process found working in it (see strayProcs) and removes it.

// strayProcs returns the live processes whose working directory is dir
// and whose command line names it or the VM id: the firecracker of an
// interrupted Create (started with --id <id> in its VM directory), found
// by what it is since no record names its pid. The scan reads /proc and
// runs only for directories without a record.
func strayProcs(dir, id string) []procRecord {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	self := os.Getpid()
	idArg := []byte("\x00--id\x00" + id + "\x00")
	var out []procRecord
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		cwd, err := os.Readlink("/proc/" + e.Name() + "/cwd")
		if err != nil || cwd != dir {
			continue
		}
		cmd, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil || !(bytes.Contains(cmd, idArg) || bytes.Contains(cmd, []byte(dir))) {
			continue
		}
		st, err := readProcStat(pid)
		if err != nil || st.state == 'Z' || st.state == 'X' {
			continue
		}
		out = append(out, procRecord{PID: pid, StartTime: st.startTime})
	}
	return out
}

// sweepOrphan removes the directory of VM id, which has no record, and
// ends the processes working in it. The caller holds the VM's lock and has
// checked that no record exists.
func (r *Runtime) sweepOrphan(id string) error {
	if _, err := os.Lstat(r.paths(id).dir); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err := r.killStrays(id); err != nil {
		return err
	}
	return r.removeVMDir(id)
}

// killStrays ends the processes working in VM id's directory that no
// record names (see strayProcs).
func (r *Runtime) killStrays(id string) error {
	var errs []error
	for _, pr := range strayProcs(r.paths(id).dir, id) {
		if err := killRecorded(pr.PID, pr.StartTime, "", killWait); err != nil {
			errs = append(errs, err)
		} else {
			r.log.Info("ended a process no record names", "vm", id, "pid", pr.PID)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("vm %q: end processes of an interrupted operation: %w", id, err)
	}
	return nil
}

// sweepVMDirs removes, from the VM directories, what no record explains:
// directories left half-deleted by a Destroy that died (renamed to a
// hidden name before removal), and directories of interrupted Creates
// (see sweepOrphan), each under its VM's lock; a directory whose lock is
// held belongs to a Create in progress and is left alone. It costs two
// directory reads, plus work for what it removes.
func (r *Runtime) sweepVMDirs() {
	ents, err := os.ReadDir(r.vmsDir)
	if err != nil {
		return
	}
	ids, err := r.reg.List(kindVM)
	if err != nil {
		return
	}
	for _, e := range ents {
		name := e.Name()
		if strings.HasPrefix(name, trashPrefix) {
			r.sweepTrash(name)
			continue
		}
		if !e.IsDir() || microvm.ValidateID(name) != nil {
			continue
		}
		if _, found := slices.BinarySearch(ids, name); found {
			continue
		}
		r.sweepOrphanLocked(name)
	}
}

// sweepOrphanLocked sweeps the directory of VM id, which had no record,
// if its lock is free and it still has no record.
func (r *Runtime) sweepOrphanLocked(id string) {
	unlock, ok := r.tryLockVM(id)
	if !ok {
		return
	}
	defer unlock()
	// Under the lock, a record that appeared meanwhile is a Create that
	// just finished.
	if err := r.reg.Get(kindVM, id, nil); !errors.Is(err, registry.ErrNotFound) {
		return
	}
	if err := r.sweepOrphan(id); err != nil {
		r.log.Error("sweep vm directory without a record", "vm", id, "err", err)
		return
	}
	r.reg.RemoveLock("vm-" + id)
}

// sweepTrash removes a VM directory left half-deleted (renamed to
// .trash-<id>-<random>), under the VM's lock: a Destroy in progress in
// another process holds it while it removes the directory itself, and is
// left alone.
func (r *Runtime) sweepTrash(name string) {
	rest := strings.TrimPrefix(name, trashPrefix)
	i := strings.LastIndexByte(rest, '-')
	if i <= 0 || microvm.ValidateID(rest[:i]) != nil {
		return // not a name removeVMDir makes
	}
	unlock, ok := r.tryLockVM(rest[:i])
	if !ok {
		return
	}
	defer unlock()
	os.RemoveAll(filepath.Join(r.vmsDir, name))
}
