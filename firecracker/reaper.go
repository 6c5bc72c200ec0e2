package firecracker

import (
	"context"
	"sync"

	"golang.org/x/sys/unix"
)

// The firecracker processes a runtime spawns are children of the embedding
// process, and outlive the Runtime (a later one adopts them). A child that
// exits after its Runtime closed, or while none watches it, must still be
// reaped (a long-lived embedder would otherwise collect zombies), and its
// exit status must reach the Runtime that asks later. reapLater hands each
// child to a process-wide reaper: a goroutine parked on a duplicate of the
// child's pidfd (in the network poller, not a thread), which reaps it when
// it exits and keeps its status until a Runtime claims it (childExit).

// maxChildExits bounds the statuses kept for children no Runtime asked
// about; the oldest are dropped.
const maxChildExits = 4096

var children struct {
	mu    sync.Mutex
	exits map[[2]uint64]exitInfo // by pid and start time
	order [][2]uint64
}

func childKey(pid int, startTime uint64) [2]uint64 { return [2]uint64{uint64(pid), startTime} }

// reapLater makes sure the child p is reaped when it exits, whoever
// watches it then.
func reapLater(p *proc) {
	var fd int
	var err error
	p.rc.Control(func(pfd uintptr) { fd, err = unix.FcntlInt(pfd, unix.F_DUPFD_CLOEXEC, 0) })
	if err != nil {
		return // the Runtime's own watcher still reaps it while it runs
	}
	q, err := newProc(p.pid, p.startTime, fd)
	if err != nil {
		return
	}
	go func() {
		defer q.close()
		for {
			if done, _ := q.wait(context.Background(), 0); done {
				break
			}
		}
		key := childKey(q.pid, q.startTime)
		children.mu.Lock()
		defer children.mu.Unlock()
		var ei exitInfo
		q.rc.Control(func(pfd uintptr) { ei = waitPidfd(int(pfd)) })
		if !ei.known {
			return // the Runtime reaped it first
		}
		if children.exits == nil {
			children.exits = map[[2]uint64]exitInfo{}
		}
		children.exits[key] = ei
		children.order = append(children.order, key)
		for len(children.order) > maxChildExits {
			delete(children.exits, children.order[0])
			children.order = children.order[1:]
		}
	}()
}

// childExit returns (and forgets) the exit status the reaper collected
// for the child pid started at startTime; known is false when it has none.
// A reap in progress is waited for.
func childExit(pid int, startTime uint64) exitInfo {
	key := childKey(pid, startTime)
	children.mu.Lock()
	defer children.mu.Unlock()
	ei, ok := children.exits[key]
	if !ok {
		return exitInfo{code: -1}
	}
	delete(children.exits, key)
	return ei
}
