// Package eventlog is an append-only, bounded log of lifecycle events in
// a directory, written by any number of processes and followed live by
// any number of subscribers in any process (inotify).
//
// Layout: events.log (newest), events.log.1 (the previous generation),
// events.lock (an flock that orders appends and rotations). Each event is
// one JSON line, written with a single O_APPEND write. When events.log
// would pass half the bound it is renamed to events.log.1 (replacing the
// older generation) and a new one is started, so the two files together
// stay under the bound. A follower holds its file open across a rename
// and drains it (and the generation between, after two rotations) before
// moving to the new file; only a follower more than a whole generation
// behind loses events.
package eventlog

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"

	microvm "github.com/mvm-dev/microvm"
	"golang.org/x/sys/unix"
)

// DefaultMaxBytes bounds the log's two files together.
const DefaultMaxBytes = 4 << 20

// maxLine bounds one event line; longer lines are skipped by followers.
const maxLine = 64 << 10

const (
	fileLog  = "events.log"
	fileOld  = "events.log.1"
	fileLock = "events.lock"
)

// Log is an event log directory.
type Log struct {
	dir string
	max int64
}

// Open opens (creating, mode 0700) the event log in dir; maxBytes <= 0
// means DefaultMaxBytes.
func Open(dir string, maxBytes int64) (*Log, error) {
	if maxBytes <= 0 {
		maxBytes = DefaultMaxBytes
	}
	if err := mkdirAll(dir); err != nil {
		return nil, fmt.Errorf("event log: %w", err)
	}
	return &Log{dir: dir, max: maxBytes}, nil
}

// Dir returns the log's directory.
func (l *Log) Dir() string { return l.dir }

func (l *Log) lock(how int) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(l.dir, fileLock), os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("event log: lock: %w", err)
	}
	for {
		err = unix.Flock(int(f.Fd()), how)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("event log: lock: %w", err)
	}
	return f, nil
}

// Append writes e as one line, rotating first when the log is full.
func (l *Log) Append(e microvm.Event) error {
	b, err := json.Marshal(e)
	if err != nil {
		return fmt.Errorf("event log: encode: %w", err)
	}
	b = append(b, '\n')
	if len(b) > maxLine {
		return fmt.Errorf("event log: event of vm %q is %d bytes, over %d", e.VM, len(b), maxLine)
	}
	lk, err := l.lock(unix.LOCK_EX)
	if err != nil {
		return err
	}
	defer lk.Close()
	path := filepath.Join(l.dir, fileLog)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("event log: %w", err)
	}
	defer func() { f.Close() }()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("event log: %w", err)
	}
	if fi.Size() > 0 && fi.Size()+int64(len(b)) > l.max/2 {
		if err := os.Rename(path, filepath.Join(l.dir, fileOld)); err != nil {
			return fmt.Errorf("event log: rotate: %w", err)
		}
		f.Close()
		if f, err = os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE|os.O_EXCL|unix.O_CLOEXEC, 0o600); err != nil {
			return fmt.Errorf("event log: %w", err)
		}
	}
	if _, err := f.Write(b); err != nil {
		return fmt.Errorf("event log: write: %w", err)
	}
	return nil
}

// Follow delivers the events appended from now on (and, when since is not
// zero, the kept events at or after since first, oldest first) until ctx
// ends; then it closes the channel. done, if not nil, is called after
// that. Lines that are not events are skipped.
func (l *Log) Follow(ctx context.Context, since time.Time, done func()) (<-chan microvm.Event, error) {
	in, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("event log: inotify: %w", err)
	}
	if _, err := unix.InotifyAddWatch(in, l.dir, unix.IN_MODIFY|unix.IN_CREATE|unix.IN_MOVED_TO); err != nil {
		unix.Close(in)
		return nil, fmt.Errorf("event log: watch %s: %w", l.dir, err)
	}
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(in)
		return nil, fmt.Errorf("event log: eventfd: %w", err)
	}
	// Open the generations together, under the lock, so no rotation
	// falls between them.
	lk, err := l.lock(unix.LOCK_SH)
	if err != nil {
		unix.Close(in)
		unix.Close(efd)
		return nil, err
	}
	var old *os.File
	if !since.IsZero() {
		old, _ = os.Open(filepath.Join(l.dir, fileOld))
	}
	cur, err := openOrCreate(filepath.Join(l.dir, fileLog))
	lk.Close()
	if err != nil {
		unix.Close(in)
		unix.Close(efd)
		if old != nil {
			old.Close()
		}
		return nil, err
	}
	f := &follower{log: l, path: filepath.Join(l.dir, fileLog), in: in, efd: efd, cur: cur, since: since, rbuf: make([]byte, 64<<10)}
	if since.IsZero() {
		if f.off, err = cur.Seek(0, io.SeekEnd); err != nil {
			f.close()
			return nil, fmt.Errorf("event log: %w", err)
		}
	}
	ch := make(chan microvm.Event, 64)
	stop := context.AfterFunc(ctx, f.cancel)
	go func() {
		defer func() {
			stop()
			f.close()
			close(ch)
			if done != nil {
				done()
			}
		}()
		if old != nil {
			ok := f.drain(ctx, old, 0, ch)
			old.Close()
			if !ok {
				return
			}
		}
		f.run(ctx, ch)
	}()
	return ch, nil
}

func openOrCreate(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("event log: %w", err)
	}
	return f, nil
}

type follower struct {
	log     *Log
	path    string
	in, efd int
	cur     *os.File
	off     int64
	since   time.Time // skip events before it
	rbuf    []byte

	mu     sync.Mutex
	closed bool
}

// cancel wakes the follower's poll (from context.AfterFunc).
func (f *follower) cancel() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.closed {
		var one = [8]byte{1}
		unix.Write(f.efd, one[:])
	}
}

func (f *follower) close() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = true
	unix.Close(f.in)
	unix.Close(f.efd)
	f.cur.Close()
}

// run delivers new lines of the current file, moving to the next file
// after a rotation, until ctx ends.
func (f *follower) run(ctx context.Context, ch chan<- microvm.Event) {
	buf := make([]byte, 4096)
	for {
		off, ok := f.read(ctx, f.cur, f.off, ch)
		if !ok {
			return
		}
		f.off = off
		// Rotated? Drain the old file (done above up to its end), then
		// follow the new one from its start.
		var a, b unix.Stat_t
		if unix.Stat(f.path, &a) == nil && unix.Fstat(int(f.cur.Fd()), &b) == nil && a.Ino != b.Ino {
			if _, ok = f.read(ctx, f.cur, f.off, ch); !ok {
				return
			}
			// Take the previous generation too when it is not the file
			// just drained (two rotations since the last read), opening
			// both under the lock so no rotation falls between.
			var mid, nf *os.File
			if lk, err := f.log.lock(unix.LOCK_SH); err == nil {
				if m, err := os.Open(f.log.path(fileOld)); err == nil {
					var ms unix.Stat_t
					if unix.Fstat(int(m.Fd()), &ms) == nil && ms.Ino != b.Ino {
						mid = m
					} else {
						m.Close()
					}
				}
				nf, _ = os.Open(f.path)
				lk.Close()
			}
			if mid != nil {
				_, ok = f.read(ctx, mid, 0, ch)
				mid.Close()
				if !ok {
					if nf != nil {
						nf.Close()
					}
					return
				}
			}
			if nf != nil {
				f.cur.Close()
				f.cur, f.off = nf, 0
				continue
			}
		}
		fds := []unix.PollFd{{Fd: int32(f.in), Events: unix.POLLIN}, {Fd: int32(f.efd), Events: unix.POLLIN}}
		if _, err := unix.Poll(fds, -1); err != nil && !errors.Is(err, unix.EINTR) {
			return
		}
		if fds[1].Revents != 0 || ctx.Err() != nil {
			return
		}
		for { // drain the inotify queue; the events themselves do not matter
			if n, err := unix.Read(f.in, buf); n <= 0 || err != nil {
				break
			}
		}
	}
}

// drain delivers every line of file from off; it reports false when ctx
// ended.
func (f *follower) drain(ctx context.Context, file *os.File, off int64, ch chan<- microvm.Event) bool {
	_, ok := f.read(ctx, file, off, ch)
	return ok
}

// read delivers the complete lines of file from off and returns the offset
// after the last one.
func (f *follower) read(ctx context.Context, file *os.File, off int64, ch chan<- microvm.Event) (int64, bool) {
	buf := f.rbuf
	var pending []byte
	for {
		n, err := file.ReadAt(buf, off+int64(len(pending)))
		data := append(pending, buf[:n]...)
		consumed := 0
		for {
			i := bytes.IndexByte(data[consumed:], '\n')
			if i < 0 {
				break
			}
			line := data[consumed : consumed+i]
			consumed += i + 1
			var e microvm.Event
			if json.Unmarshal(line, &e) != nil || !e.Type.Valid() {
				continue // not an event: skip it
			}
			if e.Time.Before(f.since) {
				continue
			}
			select {
			case ch <- e:
			case <-ctx.Done():
				return off, false
			}
		}
		off += int64(consumed)
		pending = append(pending[:0], data[consumed:]...)
		if len(pending) > maxLine {
			off += int64(len(pending)) // skip an overlong line
			pending = pending[:0]
		}
		if n == 0 || err != nil { // EOF, or an unreadable file: wait for more
			return off, true
		}
	}
}

func mkdirAll(dir string) error {
	if fi, err := os.Stat(dir); err == nil && fi.IsDir() {
		return nil
	}
	return os.MkdirAll(dir, 0o700)
}

func (l *Log) path(name string) string { return filepath.Join(l.dir, name) }
