//go:build !linux

package snapshot

import (
	"fmt"
	"io"
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
	if c.buf == nil {
		c.buf = make([]byte, copyBufSize)
	}
	for n > 0 {
		b := c.buf[:min(n, int64(len(c.buf)))]
		if _, err := src.ReadAt(b, off); err != nil {
			if err == io.EOF {
				err = fmt.Errorf("read %s: %w", src.Name(), io.ErrUnexpectedEOF)
			}
			return fmt.Errorf("%w (at offset %d)", err, off)
		}
		if _, err := dst.WriteAt(b, off); err != nil {
			return fmt.Errorf("%w (at offset %d)", err, off)
		}
		off += int64(len(b))
		n -= int64(len(b))
	}
	return nil
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
