package firecracker

import (
	"context"
	"os"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// dirWatch tells launches waiting for their API socket when something is
// created in their VM directory: one inotify instance per Runtime (made on
// first use), one watch per waiting VM directory, and one goroutine
// reading events and waking the waiter of each watch. Waiting thus costs
// no polling and adds no delay between the socket's bind and the first
// connect.
//
// Closing an inotify instance waits for an RCU grace period (10-20 ms), so
// Close leaves that to a goroutine that finishes after the Runtime closed.
type dirWatch struct {
	f  *os.File // read through the runtime's poller
	fd int      // the same descriptor, for inotify_add_watch (f.Fd would make f blocking)

	mu      sync.Mutex
	waiters map[int32]chan struct{} // by watch descriptor
	closed  bool
}

// newDirWatch starts an inotify instance and its reader. It fails where
// inotify is unavailable (or its per-user limit is reached); launches then
// poll.
func newDirWatch() (*dirWatch, error) {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return nil, err
	}
	w := &dirWatch{f: os.NewFile(uintptr(fd), "inotify"), fd: fd, waiters: make(map[int32]chan struct{})}
	go w.read()
	return w, nil
}

func (w *dirWatch) read() {
	buf := make([]byte, 64<<10)
	for {
		n, err := w.f.Read(buf)
		if err != nil {
			// Closed (or broken): waiters fall back to looking every
			// exitCheck.
			return
		}
		w.mu.Lock()
		for off := 0; off+unix.SizeofInotifyEvent <= n; {
			ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
			if ch := w.waiters[ev.Wd]; ch != nil {
				select {
				case ch <- struct{}{}:
				default: // a wake-up is already pending
				}
			}
			off += unix.SizeofInotifyEvent + int(ev.Len)
		}
		w.mu.Unlock()
	}
}

// add watches dir for creations. The channel receives (at most one
// pending) wake-up per batch of events; remove ends the watch.
func (w *dirWatch) add(dir string) (ch <-chan struct{}, remove func(), err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return nil, nil, os.ErrClosed
	}
	wd, err := unix.InotifyAddWatch(w.fd, dir, unix.IN_CREATE|unix.IN_ONLYDIR)
	if err != nil {
		return nil, nil, err
	}
	c := make(chan struct{}, 1)
	w.waiters[int32(wd)] = c
	return c, func() {
		w.mu.Lock()
		defer w.mu.Unlock()
		if w.waiters[int32(wd)] == c {
			delete(w.waiters, int32(wd))
			if !w.closed {
				unix.InotifyRmWatch(w.fd, uint32(wd))
			}
		}
	}, nil
}

// close ends the reader; the slow part runs in the background.
func (w *dirWatch) close() {
	w.mu.Lock()
	w.closed = true
	w.mu.Unlock()
	go w.f.Close()
}

// sockWatch returns the Runtime's dirWatch, or nil when inotify is not
// available.
func (r *Runtime) sockWatch() *dirWatch {
	r.dirWatchOnce.Do(func() {
		w, err := newDirWatch()
		if err != nil {
			r.log.Warn("inotify unavailable; polling for API sockets", "err", err)
			return
		}
		r.dirWatch = w
	})
	return r.dirWatch
}

// waitSocket waits until path exists (it is created in dir), p exits, or
// ctx ends. It reports whether p exited; the error is ctx's. With inotify
// the wait sleeps until something is created in dir, looking at p every
// exitCheck; without, it polls (1 ms, then 2 ms) on p's pidfd.
func (r *Runtime) waitSocket(ctx context.Context, p *proc, dir, path string) (exited bool, err error) {
	var wake <-chan struct{}
	if w := r.sockWatch(); w != nil {
		ch, remove, err := w.add(dir)
		if err == nil {
			defer remove()
			wake = ch
		}
	}
	delay := time.Millisecond
	const maxDelay = 2 * time.Millisecond
	for {
		if _, err := os.Stat(path); err == nil {
			return false, nil
		}
		if wake == nil {
			done, err := p.wait(ctx, delay)
			if done {
				return true, nil
			}
			if err != nil {
				return false, err
			}
			delay = min(2*delay, maxDelay)
			continue
		}
		if p.exited() {
			return true, nil
		}
		select {
		case <-wake:
		case <-time.After(exitCheck):
		case <-ctx.Done():
			return false, ctx.Err()
		}
	}
}

// exitCheck is how often a launch waiting (through inotify) for its API
// socket looks whether its process exited.
const exitCheck = 10 * time.Millisecond
