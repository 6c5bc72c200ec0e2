package firecracker

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"

	microvm "github.com/mvm-dev/microvm"
)

// ErrImageInUse reports a drive image that another live VM (one with a
// firecracker process) has attached in a way that excludes this use: a
// writable image is used by one VM only; a read-only image may be shared
// by any number of VMs that all attach it read-only.
var ErrImageInUse = errors.New("drive image in use by another vm")

// This file keeps a writable drive image out of two live VMs. Each image
// a firecracker opens is flock(2)ed before the spawn, exclusively when the
// drive is writable and shared when it is read-only, on a descriptor the
// process inherits: the lock lives exactly as long as the process (a Stop,
// a crash or a SIGKILL release it; nothing is recorded, so nothing goes
// stale). Files are compared by what they are (device and inode), so two
// paths of one file, a symlink or a hard link conflict too.

// imageLocks opens and locks the drive images of rec's spec for a new
// firecracker. It returns the descriptors to hand to the process (the
// caller closes its copies after the spawn), or an error matching
// ErrImageInUse that names the VM holding the image. An image that
// cannot be opened is skipped: firecracker reports the missing file itself.
func (r *Runtime) imageLocks(ctx context.Context, rec *vmRecord) ([]*os.File, error) {
	var files []*os.File
	fail := func(err error) ([]*os.File, error) {
		closeAll(files)
		return nil, err
	}
	for field, d := range specDrives(rec.Spec) {
		f, err := os.Open(d.Path)
		if err != nil {
			continue
		}
		how := unix.LOCK_EX
		if d.ReadOnly {
			how = unix.LOCK_SH
		}
		if err := flockWait(ctx, f, how); err != nil {
			f.Close()
			if errors.Is(err, unix.EWOULDBLOCK) {
				return fail(r.imageHolder(rec.ID, field, d))
			}
			return fail(fmt.Errorf("lock drive image %s (%s): %w", d.Path, field, err))
		}
		files = append(files, f)
	}
	return files, nil
}

// lockWait bounds how long imageLocks waits for a lock held by another
// process: a process that was just killed may still hold its files for
// a moment after its main thread shows as a zombie (its other threads are
// still exiting), and the VM whose process it was may be starting again.
const lockWait = time.Second

// flockWait takes a flock(2) without blocking, retrying on EINTR and,
// while another process holds it, up to lockWait (or ctx's end); it then
// fails with EWOULDBLOCK. f is a regular file, for which Fd's switch to
// blocking mode changes nothing.
func flockWait(ctx context.Context, f *os.File, how int) error {
	deadline := time.Now().Add(lockWait)
	for {
		err := unix.Flock(int(f.Fd()), how|unix.LOCK_NB)
		switch {
		case err == unix.EINTR:
			continue
		case err != unix.EWOULDBLOCK || time.Now().After(deadline):
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// imageHolder builds the error for drive d (at field) of VM id, whose
// image is locked by another process: it names the live VM and drive that
// use the same file, found among the records (only on this error path,
// so a Create costs nothing more with many VMs).
func (r *Runtime) imageHolder(id, field string, d microvm.Drive) error {
	mode := "writable"
	if d.ReadOnly {
		mode = "read-only"
	}
	st, err := os.Stat(d.Path)
	if err == nil {
		ids, _ := r.reg.List(kindVM)
		for _, other := range ids {
			if other == id {
				continue
			}
			orec, err := r.load(other)
			if err != nil || orec.Process == nil {
				continue
			}
			for ofield, od := range specDrives(orec.Spec) {
				if ost, err := os.Stat(od.Path); err == nil && os.SameFile(st, ost) && (!d.ReadOnly || !od.ReadOnly) {
					omode := "writable"
					if od.ReadOnly {
						omode = "read-only"
					}
					return fmt.Errorf("%s %s cannot be attached %s: vm %q (%s) has it attached %s; "+
						"only read-only drives may share an image (use a copy): %w",
						field, d.Path, mode, other, ofield, omode, ErrImageInUse)
				}
			}
		}
	}
	return fmt.Errorf("%s %s cannot be attached %s: another process holds a lock on it "+
		"(a vm of another state directory?): %w", field, d.Path, mode, ErrImageInUse)
}

// specDrives yields the drives of a spec with their field names, as
// microvm.Spec.Validate names them.
func specDrives(s microvm.Spec) func(yield func(string, microvm.Drive) bool) {
	return func(yield func(string, microvm.Drive) bool) {
		if !yield("root_drive", s.RootDrive) {
			return
		}
		for i, d := range s.Drives {
			if !yield(fmt.Sprintf("drives[%d]", i), d) {
				return
			}
		}
	}
}

func closeAll(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}

// recordJail writes rec, which names the jail its next process will hold,
// after checking that no other live VM holds its drive images in a way
// that excludes this use. The jailer closes every descriptor it inherits,
// so a jailed process cannot hold flocks (see imageLocks): the records
// are the locks instead, checked and written under one registry lock, so
// that of two launches sharing an image the second sees the first.
func (r *Runtime) recordJail(ctx context.Context, rec *vmRecord) error {
	check := rec.Op != opRestore
	if check {
		unlock, err := r.reg.Lock(ctx, "images")
		if err != nil {
			return fmt.Errorf("lock drive images: %w", err)
		}
		defer unlock()
		for field, d := range specDrives(rec.Spec) {
			if err := r.imageUser(rec.ID, field, d); err != nil {
				return err
			}
		}
	}
	rec.UpdatedAt = nowUTC()
	if err := r.reg.PutUnsynced(kindVM, rec.ID, rec); err != nil {
		return fmt.Errorf("vm %q: write record: %w", rec.ID, err)
	}
	return nil
}

// imageUser returns an error matching ErrImageInUse when another VM with
// a process (or a jail, whose process may be starting) attached d's image
// in a way that excludes this use.
func (r *Runtime) imageUser(id, field string, d microvm.Drive) error {
	st, err := os.Stat(d.Path)
	if err != nil {
		return nil // firecracker reports it
	}
	ids, err := r.reg.List(kindVM)
	if err != nil {
		return fmt.Errorf("check drive images: %w", err)
	}
	for _, other := range ids {
		if other == id {
			continue
		}
		orec, err := r.load(other)
		if err != nil || (orec.Process == nil && orec.Jail == nil) || orec.Op == opRestore {
			continue
		}
		if orec.Process != nil && orec.Jail == nil {
			// A direct process holds flocks; ask them.
			if f, err := os.Open(d.Path); err == nil {
				how := unix.LOCK_EX
				if d.ReadOnly {
					how = unix.LOCK_SH
				}
				err := unix.Flock(int(f.Fd()), how|unix.LOCK_NB)
				f.Close()
				if err == nil {
					continue
				}
			}
		}
		for ofield, od := range specDrives(orec.Spec) {
			if ost, err := os.Stat(od.Path); err == nil && os.SameFile(st, ost) && (!d.ReadOnly || !od.ReadOnly) {
				mode, omode := "writable", "writable"
				if d.ReadOnly {
					mode = "read-only"
				}
				if od.ReadOnly {
					omode = "read-only"
				}
				return fmt.Errorf("%s %s cannot be attached %s: vm %q (%s) has it attached %s; "+
					"only read-only drives may share an image (use a copy): %w",
					field, d.Path, mode, other, ofield, omode, ErrImageInUse)
			}
		}
	}
	return nil
}
