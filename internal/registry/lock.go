package registry

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Backoff between non-blocking lock attempts.
const (
	lockBackoffMin = time.Millisecond
	lockBackoffMax = 50 * time.Millisecond
)

// heldLock is one acquired lock: an open file description of the lock
// table holding a write lock on the name's byte.
type heldLock struct {
	f    *os.File
	once sync.Once
	err  error
}

func (h *heldLock) release() error {
	h.once.Do(func() { h.err = h.f.Close() }) // closing drops the lock
	return h.err
}

// lockTable is the file, under locks/, whose bytes are the locks: the lock
// called name is a write lock (fcntl F_OFD_SETLK) on the one byte at
// lockOffset(name). One file for every lock means taking a lock never
// creates a file (on some file systems a new inode costs far more than
// the rest of the lock), and no lock leaves a file behind.
const lockTable = "table"

// lockOffset is the byte of the lock table that the lock called name
// holds: a 62-bit FNV-1a hash of the name. Two names with the same hash
// would exclude each other (never admit two holders); at 62 bits that
// does not happen in practice.
func lockOffset(name string) int64 {
	h := fnv.New64a()
	h.Write([]byte(name))
	return int64(h.Sum64() & (1<<62 - 1))
}

// Lock acquires the exclusive lock called name, waiting until it is free or
// ctx is done; the error then wraps ctx.Err(). name follows the id rules
// (ValidateID). The lock excludes other processes and other goroutines of
// this process alike, including callers using a different Registry for the
// same directory: it is an open file description lock (fcntl(2)
// F_OFD_SETLK) on one byte of <dir>/locks/table, taken through a file
// description of its own, and the kernel drops it when the holder exits,
// even by SIGKILL. Acquisition polls with non-blocking attempts and backoff
// (1ms to 50ms), so it is not fair. A ctx that is already done fails without
// trying, and a Lock still waiting when the Registry is closed fails with
// ErrClosed.
//
// unlock releases the lock; calling it again does nothing. Taking a lock
// creates no file.
func (r *Registry) Lock(ctx context.Context, name string) (unlock func(), err error) {
	return r.lock(ctx, name, false)
}

// TryLock is Lock without waiting: ok is false (and err nil) when another
// holder has the lock.
func (r *Registry) TryLock(name string) (unlock func(), ok bool, err error) {
	unlock, err = r.lock(context.Background(), name, true)
	if errors.Is(err, errBusy) {
		return nil, false, nil
	}
	return unlock, err == nil, err
}

// RemoveLock deletes the lock file <dir>/locks/<name>.lock that versions
// before the lock table made for each lock (a lock today has no file of
// its own). Call it only while holding that lock, when what it guards is
// gone for good. Removing a lock that has no file is not an error.
func (r *Registry) RemoveLock(name string) error {
	if err := validateID("lock name", name); err != nil {
		return err
	}
	if err := r.usable(); err != nil {
		return err
	}
	err := os.Remove(filepath.Join(r.dir, locksDir, name+".lock"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("registry: remove lock %s: %w", name, err)
	}
	return nil
}

// errBusy is what a non-waiting attempt meets on a held lock.
var errBusy = errors.New("lock is held")

func (r *Registry) lock(ctx context.Context, name string, noWait bool) (unlock func(), err error) {
	if err := validateID("lock name", name); err != nil {
		return nil, err
	}
	if err := r.usable(); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("registry: lock %s: %w", name, err)
	}
	path := filepath.Join(r.dir, locksDir, lockTable)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, filePerm)
	if err != nil {
		return nil, fmt.Errorf("registry: lock %s: %w", name, err)
	}
	if err := acquire(ctx, f, lockOffset(name), r.closed.Load, noWait); err != nil {
		f.Close()
		if errors.Is(err, ErrClosed) || errors.Is(err, errBusy) {
			return nil, err
		}
		return nil, fmt.Errorf("registry: lock %s (%s): %w", name, path, err)
	}
	h := &heldLock{f: f}
	r.mu.Lock()
	if r.held == nil { // closed meanwhile
		r.mu.Unlock()
		f.Close()
		return nil, ErrClosed
	}
	r.held[h] = struct{}{}
	r.mu.Unlock()
	return func() {
		r.mu.Lock()
		delete(r.held, h)
		r.mu.Unlock()
		h.release()
	}, nil
}

// acquire takes a write lock on the byte at off of f (F_OFD_SETLK),
// retrying non-blocking attempts with jittered exponential backoff until
// ctx is done or closed reports true. With noWait it returns errBusy
// instead of waiting.
func acquire(ctx context.Context, f *os.File, off int64, closed func() bool, noWait bool) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: io.SeekStart, Start: off, Len: 1}
	delay := lockBackoffMin
	for {
		var ferr error
		if err := rc.Control(func(fd uintptr) {
			for {
				ferr = unix.FcntlFlock(fd, unix.F_OFD_SETLK, &lk)
				if ferr != unix.EINTR {
					return
				}
			}
		}); err != nil {
			return err
		}
		if ferr == nil {
			return nil
		}
		if !errors.Is(ferr, unix.EAGAIN) && !errors.Is(ferr, unix.EACCES) {
			return fmt.Errorf("fcntl F_OFD_SETLK: %w", ferr)
		}
		if noWait {
			return errBusy
		}
		// Sleep between delay/2 and delay.
		t := time.NewTimer(delay/2 + rand.N(delay/2+1))
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		if closed() {
			return ErrClosed
		}
		delay = min(2*delay, lockBackoffMax)
	}
}
