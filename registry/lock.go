package registry

import (
	"context"
	"errors"
	"fmt"
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

// heldLock is one acquired lock: an open file description holding flock.
type heldLock struct {
	f    *os.File
	once sync.Once
	err  error
}

func (h *heldLock) release() error {
	h.once.Do(func() { h.err = h.f.Close() }) // closing drops the flock
	return h.err
}

// Lock acquires the exclusive lock called name, waiting until it is free or
// ctx is done; the error then wraps ctx.Err(). name follows the id rules
// (ValidateID). The lock excludes other processes and other goroutines of
// this process alike, including callers using a different Registry for the
// same directory: it is flock(2) on <dir>/locks/<name>.lock through a file
// description of its own, and the kernel drops it when the holder exits,
// even by SIGKILL. Acquisition polls with non-blocking attempts and backoff
// (1ms to 50ms), so it is not fair. A ctx that is already done fails without
// trying, and a Lock still waiting when the Registry is closed fails with
// ErrClosed.
//
// unlock releases the lock; calling it again does nothing. A lock file
// stays until its holder removes it with [Registry.RemoveLock]; a waiter
// that then acquires the removed file notices and retries on the new one, so
// removal never lets two holders in at once.
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

// RemoveLock deletes the file of the lock called name. Call it only while
// holding that lock (for example when the thing it guards is gone for
// good), then unlock. Removing a lock that has no file is not an error.
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
	path := filepath.Join(r.dir, locksDir, name+".lock")
	var f *os.File
	for {
		f, err = os.OpenFile(path, os.O_RDWR|os.O_CREATE, filePerm)
		if err != nil {
			return nil, fmt.Errorf("registry: lock %s: %w", name, err)
		}
		if err := acquire(ctx, f, r.closed.Load, noWait); err != nil {
			f.Close()
			if errors.Is(err, ErrClosed) || errors.Is(err, errBusy) {
				return nil, err
			}
			return nil, fmt.Errorf("registry: lock %s (%s): %w", name, path, err)
		}
		// The holder before us may have removed the file (RemoveLock):
		// then our flock guards nothing and we retry on the path's file.
		if same, err := sameFile(f, path); err != nil {
			f.Close()
			return nil, fmt.Errorf("registry: lock %s: %w", name, err)
		} else if same {
			break
		}
		f.Close()
	}
	h := &heldLock{f: f}
	if err := f.Chmod(filePerm); err != nil { // umask-independent
		f.Close()
		return nil, fmt.Errorf("registry: lock %s: %w", name, err)
	}
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

// acquire takes flock(LOCK_EX) on f, retrying non-blocking attempts with
// jittered exponential backoff until ctx is done or closed reports true.
// With noWait it returns errBusy instead of waiting.
func acquire(ctx context.Context, f *os.File, closed func() bool, noWait bool) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	delay := lockBackoffMin
	for {
		var ferr error
		if err := rc.Control(func(fd uintptr) {
			for {
				ferr = unix.Flock(int(fd), unix.LOCK_EX|unix.LOCK_NB)
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
		if !errors.Is(ferr, unix.EWOULDBLOCK) {
			return fmt.Errorf("flock: %w", ferr)
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

// sameFile reports whether path still names the file f has open.
func sameFile(f *os.File, path string) (bool, error) {
	fi, err := f.Stat()
	if err != nil {
		return false, err
	}
	pi, err := os.Stat(path)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return os.SameFile(fi, pi), nil
}
