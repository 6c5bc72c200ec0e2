package registry_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mvm-dev/microvm/internal/registry"
)

// groupLog is the order of what happened during concurrent commits: each
// directory fsync's start (with the records the directory held then) and
// end, and each commit's return.
type groupLog struct {
	mu     sync.Mutex
	events []groupEvent
}

type groupEvent struct {
	kind  string   // "start", "end", "return"
	sync  int      // the directory fsync (start, end)
	names []string // start: the directory's entries; return: the id
	err   error    // return: what the commit returned
}

func (l *groupLog) add(e groupEvent) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.events = append(l.events, e)
	return len(l.events) - 1
}

// covered checks that every commit returned only after a directory fsync
// that began when its record was already in the directory had ended, and
// returns the number of directory fsyncs.
func (l *groupLog) covered(t *testing.T) int {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	ended := map[int]bool{}
	present := map[int][]string{}
	syncs := 0
	for _, e := range l.events {
		switch e.kind {
		case "start":
			present[e.sync] = e.names
			syncs++
		case "end":
			ended[e.sync] = true
		case "return":
			id := e.names[0]
			ok := false
			for s, names := range present {
				if ended[s] && slices.Contains(names, id+".json") {
					ok = true
				}
			}
			if !ok {
				t.Errorf("commit of %s returned (%v) before any directory fsync that began after its link had ended", id, e.err)
			}
		}
	}
	return syncs
}

// TestGroupedDirFsync: Creates committing at the same time in one
// directory share directory fsyncs, and none returns before an fsync that
// began after its record was linked has completed. The first fsync is held
// while the others link their records: they must all wait for a second
// fsync, which covers them all, instead of returning on the first (which
// began before their links) or each running its own.
func TestGroupedDirFsync(t *testing.T) {
	const n = 16
	r := openTemp(t)
	if err := r.Put("vm", "warm", vmRecord{Name: "x"}); err != nil { // kind directory made
		t.Fatal(err)
	}
	kdir := filepath.Join(r.Dir(), "vm")
	log := &groupLog{}
	firstStarted := make(chan struct{})
	gate := make(chan struct{})
	var syncs int
	var smu sync.Mutex
	var failDir bool
	defer registry.SetFsync(func(f *os.File) error {
		if f.Name() != kdir {
			return f.Sync()
		}
		ents, err := os.ReadDir(kdir)
		if err != nil {
			return err
		}
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		smu.Lock()
		i := syncs
		syncs++
		fail := failDir
		smu.Unlock()
		log.add(groupEvent{kind: "start", sync: i, names: names})
		if i == 0 {
			close(firstStarted)
			<-gate
		}
		err = f.Sync()
		if fail {
			err = errors.New("injected directory fsync failure")
		}
		log.add(groupEvent{kind: "end", sync: i})
		return err
	})()

	ws := make([]*registry.Pending, n)
	for i := range ws {
		w, err := r.Prepare("vm", fmt.Sprintf("g%02d", i), vmRecord{Name: "g"})
		if err != nil {
			t.Fatal(err)
		}
		ws[i] = w
	}
	var wg sync.WaitGroup
	first := make(chan struct{})
	commit := func(i int) {
		wg.Go(func() {
			err := ws[i].CommitNew()
			log.add(groupEvent{kind: "return", names: []string{fmt.Sprintf("g%02d", i)}, err: err})
			if err != nil {
				t.Errorf("commit g%02d: %v", i, err)
			}
			if i == 0 {
				close(first)
			}
		})
	}
	commit(0)
	select {
	case <-firstStarted: // the first fsync runs (held), g00 linked before it
	case <-first:
		wg.Wait()
		log.covered(t)
		t.Fatal("the first commit returned without fsyncing the directory")
	}
	for i := 1; i < n; i++ {
		commit(i)
	}
	// Wait until every other record is linked and its temporary file
	// removed: they are then waiting for the directory's fsync. (A commit
	// that returns meanwhile ends the wait: that is the failure below.)
	returned := func() bool {
		log.mu.Lock()
		defer log.mu.Unlock()
		return slices.ContainsFunc(log.events, func(e groupEvent) bool { return e.kind == "return" })
	}
	for !returned() {
		names := recordFiles(t, r, "vm")
		temps := slices.ContainsFunc(names, func(s string) bool { return strings.HasPrefix(s, ".tmp-") })
		if len(names) == n+1 && !temps {
			break
		}
		time.Sleep(time.Millisecond)
	}
	if returned() {
		t.Error("a commit returned while the only directory fsync that had begun was still running")
	}
	close(gate)
	wg.Wait()
	got := log.covered(t)
	// Ideally 2 (the held one, then one for the 15 others); a goroutine
	// descheduled between its link and its join makes a round of its own.
	if got > n/2 {
		t.Errorf("%d directory fsyncs for %d concurrent commits; want them grouped (2 expected)", got, n)
	}
	t.Logf("%d concurrent commits, %d directory fsyncs", n, got)

	// A failed shared fsync fails every commit it covered: none may
	// believe its record durable.
	smu.Lock()
	failDir = true
	smu.Unlock()
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() { errs <- r.Put("vm", fmt.Sprintf("g%02d", i), vmRecord{Name: "h"}) })
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err == nil {
			t.Error("Put succeeded although the directory fsync that covered it failed")
		}
	}
}
