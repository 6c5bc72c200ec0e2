package firecracker

import (
	"bytes"
	"errors"
	"io"
	"io/fs"
	"os"
	"slices"

	"golang.org/x/sys/unix"
)

// The VM's output files are bounded by trimming them in place, never by
// copying: firecracker keeps its descriptors open, and a copy-then-rename
// would leave it writing to an unlinked file.
//
//   - console.log (the guest serial console and firecracker's stdout and
//     stderr) is opened by the runtime with O_APPEND and handed to the
//     process. It is trimmed with fallocate(FALLOC_FL_COLLAPSE_RANGE),
//     which removes a block-aligned head of the file. The kernel holds the
//     inode lock both for the collapse and for every O_APPEND write, so a
//     write lands either before the collapse (and is shifted with the
//     rest) or after it (at the new end): nothing is lost or misplaced.
//   - firecracker.log is opened by firecracker itself, without O_APPEND:
//     its writes go to its own file offset. Collapsing would make that
//     offset point past the new end, so this file is trimmed with
//     fallocate(FALLOC_FL_PUNCH_HOLE): the head becomes a hole that takes
//     no space and the size (and firecracker's offset) keep growing. Also
//     atomic with respect to writes.
//
// Where the file system lacks COLLAPSE_RANGE (tmpfs, for instance),
// console.log is punched as well. Where it lacks both, the file is
// truncated to zero (the only remaining way to bound it; its history is
// lost). After a trim the first kept line usually starts mid-line; the
// trimmer blanks that fragment with NUL bytes, which readers skip. Bytes
// at the head are never written again by firecracker, so the blanking
// does not race with it either.
//
// Trimming runs while a Runtime is open (a periodic pass over the VMs it
// watches, on Open for every live VM, and before Logs reads). Between
// runtimes nothing trims, so a file may exceed its bound until the next
// Open; with the CLI that is the next mvm command.

// trimMode says how a file may be trimmed.
type trimMode int

const (
	// trimCollapse: the only writer uses O_APPEND (console.log).
	trimCollapse trimMode = iota
	// trimPunch: a writer may write at its own offset (firecracker.log).
	trimPunch
)

// maxFragment bounds the search for the end of a partial first line.
const maxFragment = 64 << 10

// trimFile keeps the file at path under limit bytes of data: when its
// live data (from the first data byte to the end) exceeds limit, it drops
// the oldest data so that about limit/2 remain. A missing file is not an error.
func trimFile(path string, limit int64, mode trimMode) error {
	if limit <= 0 {
		return nil
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	fd := int(f.Fd())
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return err
	}
	size := st.Size
	start := dataStart(fd, size)
	if size-start <= limit {
		return nil
	}
	bs := int64(st.Blksize)
	if bs <= 0 || bs&(bs-1) != 0 {
		bs = 4096
	}
	cut := (size - limit/2) &^ (bs - 1)
	if cut <= start {
		return nil
	}
	// A cut just after a newline leaves whole lines: nothing to blank.
	var prev [1]byte
	whole := false
	if _, err := f.ReadAt(prev[:], cut-1); err == nil && prev[0] == '\n' {
		whole = true
	}
	if mode == trimCollapse {
		// Collapsing [0, cut) needs cut < size, which holds as limit/2 > 0.
		err = unix.Fallocate(fd, unix.FALLOC_FL_COLLAPSE_RANGE, 0, cut)
		if err == nil {
			return blankFragment(f, 0, whole)
		}
		if !unsupported(err) {
			return err
		}
	}
	err = unix.Fallocate(fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 0, cut)
	if err == nil {
		return blankFragment(f, cut, whole)
	}
	if !unsupported(err) {
		return err
	}
	return f.Truncate(0)
}

// unsupported reports a file system that lacks a fallocate mode.
func unsupported(err error) bool {
	return errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOTSUP) || errors.Is(err, unix.EINVAL)
}

// dataStart returns the offset of the first byte of data (after a punched
// head), or 0 when it cannot tell.
func dataStart(fd int, size int64) int64 {
	off, err := unix.Seek(fd, 0, unix.SEEK_DATA)
	if err != nil {
		if errors.Is(err, unix.ENXIO) {
			return size // all hole
		}
		return 0
	}
	return off
}

// blankFragment overwrites the partial line starting at off (up to and
// including its newline) with NUL bytes, unless whole says the data at off
// starts a line.
func blankFragment(f *os.File, off int64, whole bool) error {
	if whole {
		return nil
	}
	buf := make([]byte, 4096)
	for done := int64(0); done < maxFragment; {
		n, err := f.ReadAt(buf, off+done)
		if i := bytes.IndexByte(buf[:n], '\n'); i >= 0 {
			_, werr := f.WriteAt(make([]byte, done+int64(i)+1), off)
			return werr
		}
		done += int64(n)
		if err != nil {
			return nil // EOF: one endless line; leave it
		}
	}
	return nil
}

// tailLines returns up to n of the newest lines of the file at path (all
// of the last limit bytes when n <= 0), oldest first. NUL bytes (holes and
// blanked fragments) are skipped; a line cut by the read window is dropped.
// A missing file gives no lines.
func tailLines(path string, n int, limit int64) ([]string, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	size := fi.Size()
	off := max(dataStart(int(f.Fd()), size), size-limit, 0)
	buf := make([]byte, size-off)
	if _, err := f.ReadAt(buf, off); err != nil && err != io.EOF {
		return nil, err
	}
	if off > 0 && len(buf) > 0 {
		// Unless the byte before the window ends a line, the first line
		// is a fragment.
		var prev [1]byte
		if _, err := f.ReadAt(prev[:], off-1); err == nil && prev[0] != '\n' && prev[0] != 0 {
			if i := bytes.IndexByte(buf, '\n'); i >= 0 {
				buf = buf[i+1:]
			} else {
				buf = nil
			}
		}
	}
	return splitLines(buf, n), nil
}

// splitLines splits buf into lines without NUL bytes or a trailing '\r',
// dropping lines that were only NULs, and keeps the last n (all when
// n <= 0).
func splitLines(buf []byte, n int) []string {
	var lines []string
	for len(buf) > 0 {
		line := buf
		if i := bytes.IndexByte(buf, '\n'); i >= 0 {
			line, buf = buf[:i], buf[i+1:]
		} else {
			buf = nil
		}
		blank := len(line) > 0 && bytes.Count(line, []byte{0}) == len(line)
		if bytes.IndexByte(line, 0) >= 0 {
			line = bytes.ReplaceAll(line, []byte{0}, nil)
		}
		if blank {
			continue
		}
		lines = append(lines, string(bytes.TrimSuffix(line, []byte{'\r'})))
	}
	if n > 0 && len(lines) > n {
		lines = slices.Clip(lines[len(lines)-n:])
	}
	return lines
}

// mergeLogs combines the tails of the console and of the firecracker log
// into at most n lines (all when n <= 0): the console's lines, then the
// log's. With n > 0 each side gets half of n, and a side with fewer lines
// leaves the rest to the other, so both stay visible.
func mergeLogs(console, log []string, n int) []string {
	if n > 0 && len(console)+len(log) > n {
		half := n / 2
		nc, nl := min(len(console), n-half), min(len(log), half)
		if nc < n-half {
			nl = min(len(log), n-nc)
		} else if nl < half {
			nc = min(len(console), n-nl)
		}
		console, log = console[len(console)-nc:], log[len(log)-nl:]
	}
	out := make([]string, 0, len(console)+len(log))
	return append(append(out, console...), log...)
}
