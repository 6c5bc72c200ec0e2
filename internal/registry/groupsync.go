package registry

import (
	"sync"
)

// dirSyncer is the group commit of one directory's fsyncs: goroutines of
// this process that have just renamed, linked or removed entries in the
// directory and need them durable share one fsync when they arrive while
// another is running.
//
// The rule that keeps each caller's guarantee: a caller returns only after
// an fsync of the directory that began after the caller's change (its
// rename, link or unlink, done before it called sync) completed, and it
// returns that fsync's error. Callers join the round that has not begun
// yet (next); the round that runs took its members before its fsync began,
// and anyone arriving during it waits for the next round. At most one
// fsync of a directory runs at a time in a process; when it ends, one of
// the waiting members of the next round runs it for all of them.
type dirSyncer struct {
	mu      sync.Mutex
	cond    sync.Cond // signalled (Broadcast) when a round ends
	running bool      // a round's fsync is in progress
	next    *syncRound
}

// syncRound is one fsync shared by its members.
type syncRound struct {
	done bool
	err  error
}

// dirSyncerFor returns the group of dir, made on first use.
func (r *Registry) dirSyncerFor(dir string) *dirSyncer {
	if d, ok := r.syncers.Load(dir); ok {
		return d.(*dirSyncer)
	}
	d := &dirSyncer{}
	d.cond.L = &d.mu
	got, _ := r.syncers.LoadOrStore(dir, d)
	return got.(*dirSyncer)
}

// syncDirGrouped makes the entries changed in dir before the call durable,
// sharing the fsync with concurrent callers on the same directory (see
// dirSyncer). The error is that of the fsync that covered the caller.
func (r *Registry) syncDirGrouped(dir string) error {
	d := r.dirSyncerFor(dir)
	d.mu.Lock()
	if d.next == nil {
		d.next = &syncRound{}
	}
	rd := d.next
	// Wait while another round's fsync runs; it may have begun before this
	// caller's change. rd can only be run by a member, after that.
	for d.running && !rd.done {
		d.cond.Wait()
	}
	if rd.done { // another member ran it
		d.mu.Unlock()
		return rd.err
	}
	// Nothing runs and rd has not run: rd is still d.next. Run it; callers
	// arriving from now on form the next round.
	d.next = nil
	d.running = true
	d.mu.Unlock()

	err := syncDir(dir)

	d.mu.Lock()
	rd.done, rd.err = true, err
	d.running = false
	d.cond.Broadcast()
	d.mu.Unlock()
	return err
}
