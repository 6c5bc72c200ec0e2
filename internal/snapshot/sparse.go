package snapshot

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
)

// copyBufSize is the buffer of the read/write fallbacks and of hashing.
const copyBufSize = 1 << 20

// zeros is fed to the hash for holes. Hashing never writes into it.
var zeros = make([]byte, copyBufSize)

var bufPool = sync.Pool{New: func() any { b := make([]byte, copyBufSize); return &b }}

// digest is what hashing a file yields.
type digest struct {
	Size      int64  // bytes hashed: the file's size
	SHA256    string // hex SHA-256 of the content, holes read as zeros
	DataBytes int64  // bytes in data extents (the rest are holes)
}

// hashFile returns the SHA-256 of f's first size bytes, sparse-aware: data
// extents are read, holes are hashed as zeros without being read (no I/O,
// and no zero pages pulled into the page cache). The result equals
// `sha256sum` of the file. ctx is checked every copyBufSize bytes.
func hashFile(ctx context.Context, f *os.File, size int64) (digest, error) {
	h := newHasher(ctx, f)
	defer h.close()
	if err := h.advance(size); err != nil {
		return digest{}, err
	}
	return h.digest(), nil
}

// hasher hashes a file from its start, sparse-aware, in steps: each
// advance hashes up to a further offset. It may follow a writer that fills
// the file in order.
type hasher struct {
	ctx       context.Context
	f         *os.File
	h         hash.Hash
	bp        *[]byte
	pos, data int64 // bytes hashed so far; bytes of them that were data
}

func newHasher(ctx context.Context, f *os.File) *hasher {
	return &hasher{ctx: ctx, f: f, h: sha256.New(), bp: bufPool.Get().(*[]byte)}
}

func (x *hasher) close() { bufPool.Put(x.bp) }

func (x *hasher) digest() digest {
	return digest{Size: x.pos, SHA256: hex.EncodeToString(x.h.Sum(nil)), DataBytes: x.data}
}

// advance hashes [pos, to).
func (x *hasher) advance(to int64) error {
	if err := dataExtents(x.f, x.pos, to, func(off, n int64) error {
		if err := x.hole(off); err != nil {
			return err
		}
		x.data += n
		return x.read(off + n)
	}); err != nil {
		return err
	}
	return x.hole(to)
}

// hole hashes zeros up to offset to.
func (x *hasher) hole(to int64) error {
	for x.pos < to {
		if err := x.ctx.Err(); err != nil {
			return err
		}
		n := min(to-x.pos, int64(len(zeros)))
		x.h.Write(zeros[:n])
		x.pos += n
	}
	return nil
}

// read hashes data up to offset to.
func (x *hasher) read(to int64) error {
	buf := *x.bp
	for x.pos < to {
		if err := x.ctx.Err(); err != nil {
			return err
		}
		b := buf[:min(to-x.pos, int64(len(buf)))]
		if _, err := x.f.ReadAt(b, x.pos); err != nil {
			if err == io.EOF {
				err = fmt.Errorf("read %s: %w", x.f.Name(), io.ErrUnexpectedEOF)
			}
			return fmt.Errorf("%w (at offset %d)", err, x.pos)
		}
		x.h.Write(b)
		x.pos += int64(len(b))
	}
	return nil
}

// hashFileDense is hashFile without hole detection: it reads every byte.
// Kept for the benchmarks that justify hashFile.
func hashFileDense(ctx context.Context, f *os.File, size int64) (digest, error) {
	h := sha256.New()
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	for pos := int64(0); pos < size; {
		if err := ctx.Err(); err != nil {
			return digest{}, err
		}
		b := buf[:min(size-pos, int64(len(buf)))]
		if _, err := f.ReadAt(b, pos); err != nil {
			return digest{}, fmt.Errorf("%w (at offset %d)", err, pos)
		}
		h.Write(b)
		pos += int64(len(b))
	}
	return digest{Size: size, SHA256: hex.EncodeToString(h.Sum(nil)), DataBytes: size}, nil
}

// MergeSparse writes to dst the memory of a Firecracker diff snapshot
// applied onto its parent's memory: a copy of parent, over which every data
// extent of diff is written at its own offset. This is what Firecracker's
// `snapshot-editor edit-memory rebase` does. A diff memory file holds only
// the pages dirtied since the parent, at their offsets, and holes
// everywhere else; a hole means "unchanged", so only data extents are
// copied (found with lseek SEEK_DATA/SEEK_HOLE), and a diff page that is
// data but all zeros still overwrites the parent, as it should.
//
// The parent is copied with its holes preserved: by reflink (FICLONE) when
// the filesystem can, else extent by extent with copy_file_range(2), else
// with read/write. The result is as large as the larger input.
//
// The diff must be on a filesystem that reports holes (ext4, XFS, btrfs,
// tmpfs, ...); on one that does not, holes read as data and would copy
// zeros over the parent. [Store] checks this before it merges.
//
// dst is written atomically: to a temporary file in dst's directory,
// fsynced, then renamed over dst (replacing it) and the directory fsynced.
// On any error, including a full disk (the error then matches
// syscall.ENOSPC), dst is untouched and the temporary file removed. The new
// file has mode 0600. dst must differ from parent and diff.
func MergeSparse(dst, parent, diff string) error {
	_, err := mergeFiles(context.Background(), dst, parent, diff, 0o600)
	if err != nil {
		return fmt.Errorf("merge %s onto %s: %w", diff, parent, err)
	}
	return nil
}

// mergeFiles is MergeSparse with a context and the new file's mode. It
// reports the number of diff data bytes applied.
func mergeFiles(ctx context.Context, dst, parentPath, diffPath string, perm fs.FileMode) (int64, error) {
	for _, p := range []string{parentPath, diffPath} {
		if same, err := samePath(dst, p); err != nil {
			return 0, err
		} else if same {
			return 0, fmt.Errorf("destination %s is also an input", dst)
		}
	}
	parent, psize, err := openRegular(parentPath)
	if err != nil {
		return 0, err
	}
	defer parent.Close()
	diff, dsize, err := openRegular(diffPath)
	if err != nil {
		return 0, err
	}
	defer diff.Close()
	var applied int64
	err = writeAtomic(dst, perm, func(out *os.File) error {
		var err error
		applied, err = mergeInto(ctx, out, parent, psize, diff, dsize, func(int64) {})
		return err
	})
	return applied, err
}

// mergeWindow is the unit in which mergeInto reports progress.
const mergeWindow = 16 << 20

// mergeInto fills the empty file out with parent overlaid by diff's data
// extents, and returns the diff's data bytes. It works in offset order, a
// window at a time, and calls done(end) once out's content before end is
// final, so that a hasher can follow it (see Pending.merge). When the
// filesystem can clone, the parent is cloned whole first.
func mergeInto(ctx context.Context, out, parent *os.File, psize int64, diff *os.File, dsize int64, done func(end int64)) (int64, error) {
	size := max(psize, dsize)
	var c rangeCopier
	var applied int64
	applyDiff := func(from, to int64) error {
		return dataExtents(diff, from, min(to, dsize), func(off, n int64) error {
			applied += n
			return copyChunked(ctx, &c, out, diff, off, n)
		})
	}
	cloned, err := cloneFile(out, parent)
	if err != nil {
		return 0, err
	}
	if cloned {
		if size != psize {
			if err := out.Truncate(size); err != nil {
				return 0, err
			}
		}
		if err := applyDiff(0, size); err != nil {
			return 0, err
		}
		done(size)
		return applied, nil
	}
	if err := out.Truncate(size); err != nil {
		return 0, err
	}
	for w := int64(0); w < size; w += mergeWindow {
		end := min(w+mergeWindow, size)
		if err := dataExtents(parent, w, min(end, psize), func(off, n int64) error {
			return copyChunked(ctx, &c, out, parent, off, n)
		}); err != nil {
			return 0, err
		}
		if err := applyDiff(w, end); err != nil {
			return 0, err
		}
		done(end)
	}
	return applied, nil
}

// mergeAndHash merges like mergeInto and hashes the result at the same
// time: a goroutine hashes each window as soon as the merge has finished
// it, so the in-kernel copy and SHA-256 run on two cores instead of one
// after the other.
func mergeAndHash(ctx context.Context, out, parent *os.File, psize int64, diff *os.File, dsize int64) (int64, digest, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	h := newHasher(ctx, out)
	defer h.close()
	ends := make(chan int64, 1+max(psize, dsize)/mergeWindow) // never blocks the merge
	hashed := make(chan error, 1)
	go func() {
		var err error
		for end := range ends {
			if err == nil {
				if err = h.advance(end); err != nil {
					cancel(err) // stop the merge too
				}
			}
		}
		hashed <- err
	}()
	applied, err := mergeInto(ctx, out, parent, psize, diff, dsize, func(end int64) { ends <- end })
	close(ends)
	herr := <-hashed
	if err != nil {
		if cause := context.Cause(ctx); cause != nil && herr != nil {
			err = herr
		}
		return 0, digest{}, err
	}
	if herr != nil {
		return 0, digest{}, fmt.Errorf("hash %s: %w", out.Name(), herr)
	}
	return applied, h.digest(), nil
}

// copySparse makes the empty file out a copy of src's first size bytes,
// holes preserved.
func copySparse(ctx context.Context, out, src *os.File, size int64) error {
	if cloned, err := cloneFile(out, src); err != nil {
		return err
	} else if cloned {
		if fi, err := out.Stat(); err != nil {
			return err
		} else if fi.Size() == size {
			return nil
		}
		return out.Truncate(size)
	}
	if err := out.Truncate(size); err != nil {
		return err
	}
	var c rangeCopier
	return dataExtents(src, 0, size, func(off, n int64) error {
		return copyChunked(ctx, &c, out, src, off, n)
	})
}

// copyChunked copies a range in 64 MiB pieces, checking ctx between them.
func copyChunked(ctx context.Context, c *rangeCopier, dst, src *os.File, off, n int64) error {
	const chunk = 64 << 20
	for n > 0 {
		if err := ctx.Err(); err != nil {
			return err
		}
		m := min(n, chunk)
		if err := c.copy(dst, src, off, m); err != nil {
			return err
		}
		off += m
		n -= m
	}
	return nil
}

// openRegular opens path read-only and checks it is a regular file.
func openRegular(path string) (*os.File, int64, error) {
	f, err := openNoFollow(path)
	if err != nil {
		return nil, 0, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, err
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, 0, fmt.Errorf("%s: not a regular file (%s)", path, fi.Mode().Type())
	}
	return f, fi.Size(), nil
}

// writeAtomic creates dst through a temporary file in its directory that
// fill writes; the file is fsynced, given perm, renamed over dst and the
// directory fsynced. On error the temporary file is removed and dst is
// untouched.
func writeAtomic(dst string, perm fs.FileMode, fill func(*os.File) error) (err error) {
	dir, base := filepath.Split(dst)
	if dir == "" {
		dir = "."
	}
	tmp, err := os.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if err := fill(tmp); err != nil {
		return err
	}
	if err := tmp.Chmod(perm); err != nil {
		return err
	}
	if err := fsync(tmp); err != nil {
		return fmt.Errorf("fsync %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), dst); err != nil {
		return err
	}
	return syncDir(dir)
}

// fsync flushes a file or directory to stable storage. Every fsync of the
// store goes through it, so that tests can count fsyncs and make them fail:
// a skipped fsync is otherwise invisible.
var fsync = (*os.File).Sync

// syncDir fsyncs a directory, making renames and creations in it durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := fsync(d); err != nil {
		return fmt.Errorf("fsync %s: %w", dir, err)
	}
	return nil
}

// samePath reports whether a and b name the same existing file, or the same
// path when a does not exist.
func samePath(a, b string) (bool, error) {
	fa, err := os.Stat(a)
	if errors.Is(err, fs.ErrNotExist) {
		aa, err1 := filepath.Abs(a)
		bb, err2 := filepath.Abs(b)
		return err1 == nil && err2 == nil && aa == bb, nil
	}
	if err != nil {
		return false, err
	}
	fb, err := os.Stat(b)
	if err != nil {
		return false, nil // reported when b is opened
	}
	return os.SameFile(fa, fb), nil
}

// readWrite copies src[off, off+n) to dst[off, off+n) through the
// copier's buffer (pread/pwrite): the portable path of rangeCopier.copy.
func (c *rangeCopier) readWrite(dst, src *os.File, off, n int64) error {
	if n <= 0 {
		return nil
	}
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
