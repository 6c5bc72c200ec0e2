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
	"github.com/mvm-dev/microvm/internal/registry"
)

// A Create without a managed network writes no record until the VM is
// configured: the VM directory, made before the process is spawned, is
// the mark that a process may exist. Recovery therefore treats a VM
// directory that no record explains as an interrupted Create: it ends
// every process found working in it (see strayProcs) and removes it.

// strayProcs returns the live processes working for VM id that were
// started by an operation that died before it recorded them, found by what
// they are: a firecracker runs in the VM directory dir with --id <id> (or
// dir) on its command line; a restore's page server names its socket in
// dir on its command line. The scan reads /proc and runs only for
// directories without a record and for recovery of interrupted operations.
func strayProcs(dir, id string) []procRecord {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	self := os.Getpid()
	idArg := []byte("\x00--id\x00" + id + "\x00")
	inDir := []byte("\x00" + dir + "/")
	var out []procRecord
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		cmd, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil {
			continue
		}
		if !bytes.Contains(cmd, inDir) { // not a page server
			cwd, err := os.Readlink("/proc/" + e.Name() + "/cwd")
			if err != nil || cwd != dir || !(bytes.Contains(cmd, idArg) || bytes.Contains(cmd, []byte(dir))) {
				continue
			}
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
	if err := r.killStrays(id, nil); err != nil {
		return err
	}
	if _, err := r.reg.RemoveTemps(kindVM, id); err != nil {
		return err
	}
	return r.removeVMDir(id)
}

// killStrays ends the processes working for VM id that no record names
// (see strayProcs), except keep (the recorded firecracker, if any).
func (r *Runtime) killStrays(id string, keep *procRecord) error {
	var errs []error
	for _, pr := range strayProcs(r.paths(id).dir, id) {
		if keep != nil && keep.PID == pr.PID && keep.StartTime == pr.StartTime {
			continue
		}
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
	r.sweepTemps()
}

// sweepTemps removes the temporary record files that writers killed
// between write and rename left, for each VM whose lock is free (every
// writer of a VM's record holds its lock, so nobody is writing them).
func (r *Runtime) sweepTemps() {
	ids, err := r.reg.TempIDs(kindVM)
	if err != nil {
		return
	}
	for _, id := range ids {
		if microvm.ValidateID(id) != nil {
			continue
		}
		unlock, ok := r.tryLockVM(id)
		if !ok {
			continue
		}
		if _, err := r.reg.RemoveTemps(kindVM, id); err != nil {
			r.log.Warn("remove temporary record files", "vm", id, "err", err)
		}
		unlock()
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
