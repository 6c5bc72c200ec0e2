//go:build linux

package snapshot

import (
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// dataExtents calls fn, in file order, for every data extent [off, off+n)
// of f within [from, to), as lseek(2) SEEK_DATA / SEEK_HOLE report them
// (clipped to the range). Everything between extents is a hole and reads
// as zeros. On a filesystem without hole reporting the kernel's generic
// lseek reports the whole file as one data extent, which is still correct
// (only slower).
func dataExtents(f *os.File, from, to int64, fn func(off, n int64) error) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	for off := from; off < to; {
		var data, hole int64
		var serr error
		if err := rc.Control(func(fd uintptr) {
			data, serr = seek(int(fd), off, unix.SEEK_DATA)
			if serr != nil {
				return
			}
			hole, serr = seek(int(fd), data, unix.SEEK_HOLE)
		}); err != nil {
			return err
		}
		switch {
		case errors.Is(serr, unix.ENXIO): // no data at or after off
			return nil
		case errors.Is(serr, unix.EINVAL), errors.Is(serr, unix.EOPNOTSUPP):
			// No SEEK_DATA at all (very old kernels, some FUSE): all data.
			return fn(off, to-off)
		case serr != nil:
			return fmt.Errorf("lseek %s: %w", f.Name(), serr)
		}
		if data >= to {
			return nil
		}
		hole = min(hole, to)
		if err := fn(data, hole-data); err != nil {
			return err
		}
		off = hole
	}
	return nil
}

func seek(fd int, off int64, whence int) (int64, error) {
	for {
		n, err := unix.Seek(fd, off, whence)
		if err != unix.EINTR {
			return n, err
		}
	}
}

// cloneFile makes dst share src's extents (FICLONE: a reflink on btrfs,
// XFS, bcachefs). It reports false, with no error, when the filesystem
// cannot clone; dst is then unchanged.
func cloneFile(dst, src *os.File) (bool, error) {
	err := unix.IoctlFileClone(int(dst.Fd()), int(src.Fd()))
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, unix.EOPNOTSUPP), errors.Is(err, unix.ENOTTY), errors.Is(err, unix.EXDEV),
		errors.Is(err, unix.EINVAL), errors.Is(err, unix.ENOSYS), errors.Is(err, unix.EPERM):
		return false, nil
	default:
		return false, fmt.Errorf("clone %s onto %s: %w", src.Name(), dst.Name(), err)
	}
}

// rangeCopier copies byte ranges between files at the same offsets, with
// copy_file_range(2) (in-kernel, and a reflink where the filesystem can)
// and pread/pwrite when that is not available.
type rangeCopier struct {
	noCFR bool   // copy_file_range failed as unsupported once: stop trying
	buf   []byte // fallback buffer
}

// copy copies src[off, off+n) to dst[off, off+n).
func (c *rangeCopier) copy(dst, src *os.File, off, n int64) error {
	for !c.noCFR && n > 0 {
		roff, woff := off, off
		m, err := unix.CopyFileRange(int(src.Fd()), &roff, int(dst.Fd()), &woff, int(min(n, 1<<30)), 0)
		switch {
		case err == unix.EINTR:
			continue
		case errors.Is(err, unix.EXDEV), errors.Is(err, unix.ENOSYS), errors.Is(err, unix.EOPNOTSUPP),
			errors.Is(err, unix.EINVAL), errors.Is(err, unix.EPERM):
			c.noCFR = true
		case err != nil:
			return fmt.Errorf("copy %s to %s at offset %d: %w", src.Name(), dst.Name(), off, err)
		case m == 0:
			return fmt.Errorf("copy %s at offset %d: %w", src.Name(), off, io.ErrUnexpectedEOF)
		default:
			off += int64(m)
			n -= int64(m)
		}
	}
	return c.readWrite(dst, src, off, n)
}

// renameNoReplace renames oldpath to newpath, failing with an error that
// matches fs.ErrExist when newpath exists (renameat2 RENAME_NOREPLACE).
func renameNoReplace(oldpath, newpath string) error {
	err := unix.Renameat2(unix.AT_FDCWD, oldpath, unix.AT_FDCWD, newpath, unix.RENAME_NOREPLACE)
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) {
		// Filesystem without RENAME_NOREPLACE: check, then rename. Callers
		// hold the store lock, so nobody races the check.
		if _, err := os.Lstat(newpath); err == nil {
			return &os.LinkError{Op: "rename", Old: oldpath, New: newpath, Err: os.ErrExist}
		}
		return os.Rename(oldpath, newpath)
	}
	if err != nil {
		return &os.LinkError{Op: "rename", Old: oldpath, New: newpath, Err: err}
	}
	return nil
}

// flock applies how (unix.LOCK_EX, optionally |unix.LOCK_NB) to f,
// retrying on EINTR. With LOCK_NB a held lock gives unix.EWOULDBLOCK.
func flock(f *os.File, how int) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) {
		for {
			ferr = unix.Flock(int(fd), how)
			if ferr != unix.EINTR {
				return
			}
		}
	}); err != nil {
		return err
	}
	return ferr
}

// openNoFollow opens path read-only, refusing a symlink as its last
// component (the files of a snapshot are always regular files).
func openNoFollow(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW, 0)
}
