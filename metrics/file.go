package metrics

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"

	"golang.org/x/sys/unix"
)

// readChunk is how much of the metrics file one read takes.
const readChunk = 256 << 10

// state is what the state file keeps between calls and processes.
type state struct {
	// Dev and Ino identify the metrics file read so far; Offset is where
	// the next unread line starts.
	Dev    uint64 `json:"dev"`
	Ino    uint64 `json:"ino"`
	Offset int64  `json:"offset"`
	Totals Totals `json:"totals"`
}

// Collect reads the reports firecracker appended to the metrics file at
// metricsPath since the last call (by any process) and returns the totals
// kept in the state file at statePath. A missing metrics file counts as
// empty. A state file that cannot be decoded is replaced: the totals then
// restart from the reports still in the metrics file, and the error says
// so (the totals are still returned).
func Collect(metricsPath, statePath string) (Totals, error) {
	if t, ok := upToDate(metricsPath, statePath); ok {
		return t, nil
	}
	if !exists(metricsPath) && !exists(statePath) {
		return Totals{}, nil // metrics never configured: leave no files
	}
	return withState(statePath, func(st *state) error {
		return st.follow(metricsPath)
	})
}

// Relaunch is for a new firecracker process about to be given the metrics
// file: it reads the reports the previous process left (as Collect), then
// empties the file, since the new process writes from offset 0, and counts
// the new process. The caller makes sure no process writes the file
// meanwhile.
func Relaunch(metricsPath, statePath string) (Totals, error) {
	return withState(statePath, func(st *state) error {
		if err := st.follow(metricsPath); err != nil {
			return err
		}
		if err := os.Truncate(metricsPath, 0); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("metrics: empty %s: %w", metricsPath, err)
		}
		st.Offset = 0
		st.Totals.Processes++
		return nil
	})
}

// Load returns the totals in the state file without reading the metrics
// file (zero totals when there is no state file yet).
func Load(statePath string) (Totals, error) {
	b, err := os.ReadFile(statePath)
	if errors.Is(err, fs.ErrNotExist) {
		return Totals{}, nil
	}
	if err != nil {
		return Totals{}, fmt.Errorf("metrics: read state %s: %w", statePath, err)
	}
	var st state
	if err := json.Unmarshal(b, &st); err != nil {
		return Totals{}, fmt.Errorf("metrics: state %s: %w: %w", statePath, ErrMalformed, err)
	}
	return st.Totals, nil
}

// withState runs fn on the state under the state's lock and saves it when
// fn changed it.
func withState(statePath string, fn func(*state) error) (Totals, error) {
	lk, err := os.OpenFile(statePath+".lock", os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return Totals{}, fmt.Errorf("metrics: lock: %w", err)
	}
	defer lk.Close()
	if err := flock(int(lk.Fd())); err != nil {
		return Totals{}, fmt.Errorf("metrics: lock %s: %w", lk.Name(), err)
	}
	var st state
	var warn error
	old, err := os.ReadFile(statePath)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		old = nil
	case err != nil:
		return Totals{}, fmt.Errorf("metrics: read state %s: %w", statePath, err)
	default:
		if err := json.Unmarshal(old, &st); err != nil {
			warn = fmt.Errorf("metrics: state %s: %w (%w): totals restart", statePath, ErrMalformed, err)
			st = state{}
			old = nil
		}
	}
	if err := fn(&st); err != nil {
		return st.Totals.Clone(), err
	}
	b, err := json.Marshal(&st)
	if err != nil {
		return Totals{}, fmt.Errorf("metrics: encode state: %w", err)
	}
	if !bytes.Equal(b, old) {
		if err := writeAtomic(statePath, b); err != nil {
			return st.Totals.Clone(), err
		}
	}
	remember(statePath, &st)
	return st.Totals.Clone(), warn
}

func flock(fd int) error {
	for {
		err := unix.Flock(fd, unix.LOCK_EX)
		if !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}

// writeAtomic replaces path with b through a temporary file and a rename:
// readers see the old or the new state, never a mix. It does not fsync:
// the state matters only while the VM's files do, and a host crash that
// loses the rename leaves the previous state, whose offset still points
// into the (also rewound or lost) metrics file.
func writeAtomic(path string, b []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("metrics: write state: %w", err)
	}
	_, err = f.Write(b)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		os.Remove(f.Name())
		return fmt.Errorf("metrics: write state %s: %w", path, err)
	}
	return nil
}

// follow reads the complete lines past st.Offset into st.Totals.
func (st *state) follow(path string) error {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("metrics: open %s: %w", path, err)
	}
	defer f.Close()
	var fi unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &fi); err != nil {
		return fmt.Errorf("metrics: stat %s: %w", path, err)
	}
	if fi.Mode&unix.S_IFMT != unix.S_IFREG {
		return fmt.Errorf("metrics: %s is not a regular file (a FIFO would block or starve firecracker)", path)
	}
	if st.Dev != uint64(fi.Dev) || st.Ino != fi.Ino || fi.Size < st.Offset {
		// Another file, or one emptied: read it from its start.
		st.Dev, st.Ino, st.Offset = uint64(fi.Dev), fi.Ino, 0
	}
	if ds, err := unix.Seek(int(f.Fd()), st.Offset, unix.SEEK_DATA); err == nil && ds > st.Offset {
		st.Offset = ds // skip a hole the trimmer punched
	} else if errors.Is(err, unix.ENXIO) {
		st.Offset = fi.Size // all hole past the offset
	}
	var pending []byte // an incomplete line
	var buf []byte
	if off := st.Offset; off < fi.Size {
		buf = make([]byte, min(readChunk, fi.Size-off))
	}
	off := st.Offset
	for off < fi.Size {
		n, err := f.ReadAt(buf, off)
		if n == 0 && err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			return fmt.Errorf("metrics: read %s: %w", path, err)
		}
		off += int64(n)
		data := buf[:n]
		for {
			i := bytes.IndexByte(data, '\n')
			if i < 0 {
				pending = append(pending, data...)
				if len(pending) > MaxLine {
					// No newline in MaxLine bytes: skip them.
					st.Totals.Malformed++
					st.Offset += int64(len(pending))
					pending = pending[:0]
				}
				break
			}
			line := data[:i]
			if len(pending) > 0 {
				line = append(pending, line...)
			}
			st.Offset += int64(len(pending)) + int64(i) + 1
			pending = pending[:0]
			st.addLine(line)
			data = data[i+1:]
		}
	}
	return nil
}

// addLine parses one line, skipping the NUL bytes of a trimmed fragment.
func (st *state) addLine(line []byte) {
	line = bytes.Trim(line, "\x00 \t\r")
	if len(line) == 0 {
		return
	}
	r, err := Parse(line)
	if err != nil {
		st.Totals.Malformed++
		return
	}
	st.Totals.Add(r)
}

// cached is a decoded state file, known by its identity: the state file
// is only ever replaced (rename), so an unchanged inode, size and mtime
// mean unchanged contents.
type cached struct {
	dev, ino uint64
	size     int64
	mtime    unix.Timespec
	st       state
}

// cache holds the state files this process decoded last, by path.
var cache sync.Map // string -> *cached

// upToDate returns the cached totals when neither the state file nor the
// metrics file changed since this process last read them (nothing new to
// read): the common case, with no lock, no decoding and no write.
func upToDate(metricsPath, statePath string) (Totals, bool) {
	v, ok := cache.Load(statePath)
	if !ok {
		return Totals{}, false
	}
	c := v.(*cached)
	var ss, ms unix.Stat_t
	if unix.Stat(statePath, &ss) != nil || uint64(ss.Dev) != c.dev || ss.Ino != c.ino || ss.Size != c.size || ss.Mtim != c.mtime {
		return Totals{}, false
	}
	err := unix.Lstat(metricsPath, &ms)
	switch {
	case errors.Is(err, unix.ENOENT):
		return c.st.Totals.Clone(), true
	case err != nil:
		return Totals{}, false
	}
	if ms.Mode&unix.S_IFMT != unix.S_IFREG || uint64(ms.Dev) != c.st.Dev || ms.Ino != c.st.Ino || ms.Size != c.st.Offset {
		return Totals{}, false
	}
	return c.st.Totals.Clone(), true
}

// remember caches the state just written (or found unchanged) at path.
func remember(path string, st *state) {
	var ss unix.Stat_t
	if unix.Stat(path, &ss) != nil {
		cache.Delete(path)
		return
	}
	cache.Store(path, &cached{dev: uint64(ss.Dev), ino: ss.Ino, size: ss.Size, mtime: ss.Mtim, st: state{
		Dev: st.Dev, Ino: st.Ino, Offset: st.Offset, Totals: st.Totals.Clone()}})
}

// Forget drops what this process cached of the state file at statePath
// (for a VM that is gone).
func Forget(statePath string) { cache.Delete(statePath) }

func exists(path string) bool {
	var st unix.Stat_t
	return !errors.Is(unix.Lstat(path, &st), unix.ENOENT)
}
