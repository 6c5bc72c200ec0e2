//go:build !linux

package snapshot

import (
	"os"
	"syscall"
)

// Portable fallbacks: Firecracker runs on Linux only, so these exist to keep
// the package building elsewhere (documentation, tools). Holes are not
// detected: every file is one data extent, which is correct but dense.

func dataExtents(f *os.File, from, to int64, fn func(off, n int64) error) error {
	if from >= to {
		return nil
	}
	return fn(from, to-from)
}

func cloneFile(dst, src *os.File) (bool, error) { return false, nil }

type rangeCopier struct{ buf []byte }

func (c *rangeCopier) copy(dst, src *os.File, off, n int64) error {
	return c.readWrite(dst, src, off, n)
}

func renameNoReplace(oldpath, newpath string) error {
	if _, err := os.Lstat(newpath); err == nil {
		return &os.LinkError{Op: "rename", Old: oldpath, New: newpath, Err: os.ErrExist}
	}
	return os.Rename(oldpath, newpath)
}

func flock(f *os.File, how int) error {
	for {
		err := syscall.Flock(int(f.Fd()), how)
		if err != syscall.EINTR {
			return err
		}
	}
}

func openNoFollow(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
}
