package image

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// CloneMethod says how Clone copied an image.
type CloneMethod string

// Clone methods.
const (
	// Reflink: the clone shares the source's blocks (FICLONE, on
	// file systems such as XFS and btrfs); writes copy them.
	Reflink CloneMethod = "reflink"
	// SparseCopy: the data extents were copied (copy_file_range, which
	// the file system may itself share), holes left as holes.
	SparseCopy CloneMethod = "sparse-copy"
)

// CloneOptions tunes Clone. The zero value is valid.
type CloneOptions struct {
	// SizeBytes grows the clone (file and ext4 file system, with
	// resize2fs, offline) to this size; 0 keeps the source's size. It
	// must be a multiple of 4096 and not smaller than the source.
	SizeBytes int64
	// NoReflink skips FICLONE and always copies (tests, benchmarks).
	NoReflink bool
	// NoSync skips the fsync of the clone before it is renamed into
	// place. A sparse copy's fsync writes all its data to disk and is most
	// of its cost; without it, the clone's data becomes durable with the
	// guest's first flush (Firecracker fsyncs the file then), and a host
	// crash before that can leave a clone with lost blocks, so the caller
	// must discard clones of VMs that had not flushed (e.g. re-clone after
	// a host reboot).
	NoSync bool
	// Resize2fs and E2fsck are the programs; "" looks for them on PATH
	// and in the sbin directories.
	Resize2fs, E2fsck string
}

// cloneTmpInfix is in the names of clones in progress; each is
// flock(2)ed by its writer, so SweepClones can tell abandoned ones.
const cloneTmpInfix = ".clone-"

// Clone makes dst a private, writable copy-on-write clone of the image
// file src: a reflink where the file system has it, else a sparse copy;
// then, with opts.SizeBytes, grows the file and its ext4 file system. dst
// must not exist. The clone is written to a hidden temporary file beside
// dst and renamed to dst (without replacing anything) only when complete
// and synced, so a failure or crash leaves nothing at dst; [SweepClones]
// removes what a crashed process left.
func Clone(ctx context.Context, src, dst string, opts CloneOptions) (CloneMethod, error) {
	if opts.SizeBytes < 0 || opts.SizeBytes%4096 != 0 || opts.SizeBytes > int64(MaxSizeMiB)<<20 {
		return "", fmt.Errorf("%w: size_bytes must be a multiple of 4096 between 0 and %d (got %d)", ErrInvalidOptions, int64(MaxSizeMiB)<<20, opts.SizeBytes)
	}
	if dst == "" {
		return "", fmt.Errorf("%w: dst: the clone's path is required", ErrInvalidOptions)
	}
	in, err := os.Open(src)
	if err != nil {
		return "", fmt.Errorf("%w: src: %w", ErrInvalidOptions, err)
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return "", fmt.Errorf("image: clone %s: %w", src, err)
	}
	if !fi.Mode().IsRegular() {
		return "", fmt.Errorf("%w: src: %s is not a regular file", ErrInvalidOptions, src)
	}
	size := fi.Size()
	if opts.SizeBytes != 0 && opts.SizeBytes < size {
		return "", fmt.Errorf("%w: size_bytes %d is smaller than the image (%d bytes); shrinking is not supported", ErrInvalidOptions, opts.SizeBytes, size)
	}
	if _, err := os.Lstat(dst); err == nil {
		return "", fmt.Errorf("%w: dst: %s exists", ErrInvalidOptions, dst)
	}
	out, err := os.CreateTemp(filepath.Dir(dst), "."+filepath.Base(dst)+cloneTmpInfix+"*")
	if err != nil {
		return "", fmt.Errorf("image: clone beside %s: %w", dst, err)
	}
	tmp := out.Name()
	done := false
	defer func() {
		out.Close() // drops the flock
		if !done {
			os.Remove(tmp)
		}
	}()
	if err := syscall.Flock(int(out.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		return "", fmt.Errorf("image: lock %s: %w", tmp, err)
	}
	method := SparseCopy
	if !opts.NoReflink && unix.IoctlFileClone(int(out.Fd()), int(in.Fd())) == nil {
		method = Reflink
	} else if err := sparseCopy(ctx, in, out, size); err != nil {
		return "", fmt.Errorf("image: clone %s: %w", src, err)
	}
	if opts.SizeBytes > size {
		if err := out.Truncate(opts.SizeBytes); err != nil {
			return "", fmt.Errorf("image: grow %s: %w", tmp, err)
		}
		if err := resizeExt4(ctx, tmp, opts); err != nil {
			return "", err
		}
	}
	if err := syncUnless(out, opts.NoSync); err != nil {
		return "", fmt.Errorf("image: sync %s: %w", tmp, err)
	}
	if err := unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, dst, unix.RENAME_NOREPLACE); err != nil {
		if errors.Is(err, unix.EEXIST) {
			return "", fmt.Errorf("%w: dst: %s exists", ErrInvalidOptions, dst)
		}
		return "", fmt.Errorf("image: clone to %s: %w", dst, err)
	}
	done = true
	if d, err := os.Open(filepath.Dir(dst)); err == nil {
		d.Sync()
		d.Close()
	}
	return method, nil
}

func syncUnless(f *os.File, skip bool) error {
	if skip {
		return nil
	}
	return f.Sync()
}

// sparseCopy copies the data extents of in (size bytes) to out, leaving
// holes as holes.
func sparseCopy(ctx context.Context, in, out *os.File, size int64) error {
	if err := out.Truncate(size); err != nil {
		return err
	}
	ifd := int(in.Fd())
	for off := int64(0); off < size; {
		if err := ctx.Err(); err != nil {
			return context.Cause(ctx)
		}
		data, err := unix.Seek(ifd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			return nil // only a hole is left
		}
		if err != nil {
			return fmt.Errorf("SEEK_DATA: %w", err)
		}
		hole, err := unix.Seek(ifd, data, unix.SEEK_HOLE)
		if err != nil {
			return fmt.Errorf("SEEK_HOLE: %w", err)
		}
		if hole > size {
			hole = size
		}
		if err := copyRange(ctx, in, out, data, hole-data); err != nil {
			return err
		}
		off = hole
	}
	return nil
}

// copyRange copies [off, off+n) of in to the same offsets of out with
// copy_file_range, falling back to read/write where the kernel refuses.
func copyRange(ctx context.Context, in, out *os.File, off, n int64) error {
	for n > 0 {
		if err := ctx.Err(); err != nil {
			return context.Cause(ctx)
		}
		roff, woff := off, off
		chunk := min(n, 1<<30)
		k, err := unix.CopyFileRange(int(in.Fd()), &roff, int(out.Fd()), &woff, int(chunk), 0)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			if errors.Is(err, unix.EXDEV) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EINVAL) {
				_, err := io.Copy(io.NewOffsetWriter(out, off), io.NewSectionReader(in, off, n))
				return err
			}
			return fmt.Errorf("copy_file_range: %w", err)
		}
		if k == 0 {
			return fmt.Errorf("copy_file_range: source ended early at %d: %w", off, io.ErrUnexpectedEOF)
		}
		off += int64(k)
		n -= int64(k)
	}
	return nil
}

// resizeExt4 grows the ext4 file system in img to the file's size, offline.
// resize2fs wants a file system checked since it was last mounted; when it
// says so, e2fsck -fp runs on the clone and resize2fs again.
func resizeExt4(ctx context.Context, img string, opts CloneOptions) error {
	resize, err := findTool(opts.Resize2fs, "resize2fs", "e2fsprogs")
	if err != nil {
		return err
	}
	run := func(prog string, args ...string) (string, error) {
		out, err := exec.CommandContext(ctx, prog, args...).CombinedOutput()
		if ctx.Err() != nil {
			return string(out), context.Cause(ctx)
		}
		return string(out), err
	}
	out, err := run(resize, img)
	if err != nil && strings.Contains(out, "e2fsck") {
		fsck, ferr := findTool(opts.E2fsck, "e2fsck", "e2fsprogs")
		if ferr != nil {
			return ferr
		}
		// e2fsck -p exits 1 when it fixed something; above 2 is failure.
		fout, ferr := run(fsck, "-fp", img)
		var ee *exec.ExitError
		if ferr != nil && !(errors.As(ferr, &ee) && ee.ExitCode() <= 2) {
			return fmt.Errorf("image: e2fsck -fp of the clone: %w: %s", ferr, lastLines(fout, 5))
		}
		out, err = run(resize, img)
	}
	if err != nil {
		return fmt.Errorf("image: resize2fs %s: %w: %s", img, err, lastLines(out, 5))
	}
	return nil
}

// SweepClones removes the clones in progress that crashed processes left
// in dir (hidden "*.clone-*" files whose writer's flock is gone) and
// returns how many it removed. Clones being written by live processes are
// left alone.
func SweepClones(dir string) (int, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return 0, fmt.Errorf("image: sweep clones: %w", err)
	}
	n := 0
	var errs []error
	for _, e := range ents {
		if !strings.HasPrefix(e.Name(), ".") || !strings.Contains(e.Name(), cloneTmpInfix) || !e.Type().IsRegular() {
			continue
		}
		p := filepath.Join(dir, e.Name())
		f, err := os.Open(p)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) == nil {
			if err := os.Remove(p); err == nil {
				n++
			} else {
				errs = append(errs, err)
			}
		}
		f.Close()
	}
	return n, errors.Join(errs...)
}
