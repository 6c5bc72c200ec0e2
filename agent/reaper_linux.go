package agent

import (
	"errors"
	"os"
	"os/exec"
	"os/signal"
	"sync"

	"golang.org/x/sys/unix"
)

// Reaper collects every child process that exits, orphans included, as
// the guest's init must; the commands the agent starts are waited for
// through it, so that their exit statuses are not lost to the reaping of
// orphans. Start one with [StartReaper], once per process.
type Reaper struct {
	mu      sync.Mutex
	waiters map[int]chan unix.WaitStatus
}

// StartReaper starts reaping every child of this process on SIGCHLD.
func StartReaper() *Reaper {
	r := &Reaper{waiters: map[int]chan unix.WaitStatus{}}
	ch := make(chan os.Signal, 16)
	signal.Notify(ch, unix.SIGCHLD)
	go func() {
		for range ch {
			r.ReapAll()
		}
	}()
	return r
}

// Start starts cmd (cmd.Wait must not be called: its status comes on the
// channel). The registration happens under the same lock as the reaping,
// so a command that exits at once is not missed.
func (r *Reaper) Start(cmd *exec.Cmd) (<-chan unix.WaitStatus, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	ch := make(chan unix.WaitStatus, 1)
	r.waiters[cmd.Process.Pid] = ch
	return ch, nil
}

// ReapAll collects every exited child without blocking and hands the
// statuses of started commands to their waiters; it reports whether no
// child is left.
func (r *Reaper) ReapAll() bool {
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if errors.Is(err, unix.ECHILD) {
			return true
		}
		if pid <= 0 || err != nil {
			return false
		}
		r.mu.Lock()
		if ch, ok := r.waiters[pid]; ok {
			ch <- ws
			delete(r.waiters, pid)
		}
		r.mu.Unlock()
	}
}
