package firecracker_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"

	microvm "github.com/mvm-dev/microvm"
	"github.com/mvm-dev/microvm/firecracker"
)

// eventsChildEnv makes the test binary an event subscriber in its own
// process: it opens a runtime over the state directory the variable
// names, prints "ready", then each event as a JSON line.
const eventsChildEnv = "MVM_FIRECRACKER_TEST_EVENTS"

func init() {
	state := os.Getenv(eventsChildEnv)
	if state == "" {
		return
	}
	ctx := context.Background()
	rt, err := firecracker.Open(ctx, firecracker.Config{StateDir: state, FirecrackerBin: "/bin/true"})
	if err != nil {
		fmt.Fprintln(os.Stderr, "events child:", err)
		os.Exit(2)
	}
	ch, err := rt.Events(ctx, nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, "events child:", err)
		os.Exit(2)
	}
	fmt.Println("ready")
	enc := json.NewEncoder(os.Stdout)
	for e := range ch {
		enc.Encode(e)
	}
	os.Exit(0)
}

// subscriber runs an event subscriber in another process.
type subscriber struct {
	cmd    *exec.Cmd
	events chan microvm.Event
}

func startSubscriber(t *testing.T, state string) *subscriber {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), eventsChildEnv+"="+state)
	out, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	sc := bufio.NewScanner(out)
	if !sc.Scan() || sc.Text() != "ready" {
		t.Fatalf("subscriber: %q", sc.Text())
	}
	s := &subscriber{cmd: cmd, events: make(chan microvm.Event, 100)}
	go func() {
		defer close(s.events)
		for sc.Scan() {
			var e microvm.Event
			if json.Unmarshal(sc.Bytes(), &e) == nil {
				s.events <- e
			}
		}
	}()
	return s
}

func (s *subscriber) next(t *testing.T) microvm.Event {
	t.Helper()
	select {
	case e, ok := <-s.events:
		if !ok {
			t.Fatal("subscriber ended")
		}
		return e
	case <-time.After(10 * time.Second):
		t.Fatal("no event in 10s")
	}
	return microvm.Event{}
}

// Every operation is seen, in order, by a subscriber in another process;
// a crash watched by two runtimes (each VM process has a watcher in each)
// gives exactly one crashed event, with the reason.
func TestEventsOtherProcess(t *testing.T) {
	ctx := context.Background()
	state := t.TempDir()
	bin := standin(t)
	rt := open(t, state, bin)
	t.Cleanup(func() { destroyAll(t, rt); rt.Close() })
	sub := startSubscriber(t, state)
	// A local subscriber too, which the runtime's Close ends.
	local, err := rt.Events(ctx, &microvm.EventOptions{Since: time.Now().Add(-time.Hour)})
	if err != nil {
		t.Fatal(err)
	}

	want := func(typ microvm.EventType, st microvm.Status) microvm.Event {
		t.Helper()
		e := sub.next(t)
		if e.Type != typ || e.Status != st || e.VM == "" || e.PID != os.Getpid() {
			t.Fatalf("event %+v, want %s (%s)", e, typ, st)
		}
		return e
	}
	if _, err := rt.Create(ctx, "e1", testSpec(t)); err != nil {
		t.Fatal(err)
	}
	want(microvm.EventCreated, microvm.StatusCreated)
	rt.Start(ctx, "e1")
	want(microvm.EventStarted, microvm.StatusRunning)
	rt.Pause(ctx, "e1")
	want(microvm.EventPaused, microvm.StatusPaused)
	if _, err := rt.Snapshot(ctx, "e1", "snap1", nil); err != nil {
		t.Fatal(err)
	}
	if e := want(microvm.EventSnapshotted, microvm.StatusPaused); e.Snapshot != "snap1" {
		t.Errorf("snapshot = %q", e.Snapshot)
	}
	rt.Resume(ctx, "e1")
	want(microvm.EventResumed, microvm.StatusRunning)
	if _, err := rt.Restore(ctx, "e2", "snap1", nil); err != nil {
		t.Fatal(err)
	}
	if e := want(microvm.EventRestored, microvm.StatusRunning); e.VM != "e2" || e.Snapshot != "snap1" {
		t.Errorf("restored %+v", e)
	}
	rt.Stop(ctx, "e2", nil)
	want(microvm.EventStopped, microvm.StatusStopped)
	rt.Destroy(ctx, "e2")
	want(microvm.EventDestroyed, microvm.StatusDestroyed)

	// A second runtime watches e1 too.
	rt2 := open(t, state, bin)
	defer rt2.Close()
	if _, err := rt2.Get(ctx, "e1"); err != nil {
		t.Fatal(err)
	}
	vm, _ := rt.Get(ctx, "e1")
	if err := syscall.Kill(vm.Backend.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	e := want(microvm.EventCrashed, microvm.StatusFailed)
	if e.VM != "e1" || e.Reason == "" {
		t.Fatalf("crash event %+v", e)
	}
	t.Logf("crash reason: %s", e.Reason)
	// Both runtimes have settled it; a later event comes next, not a
	// second crash.
	waitStatus(t, rt2, "e1", microvm.StatusFailed)
	waitStatus(t, rt, "e1", microvm.StatusFailed)
	rt.Destroy(ctx, "e1")
	if e := sub.next(t); e.Type != microvm.EventDestroyed {
		t.Fatalf("after the crash: %+v", e)
	}
	// The local subscriber saw the same sequence, and Close ends it.
	wantTypes := []microvm.EventType{microvm.EventCreated, microvm.EventStarted, microvm.EventPaused, microvm.EventSnapshotted,
		microvm.EventResumed, microvm.EventRestored, microvm.EventStopped, microvm.EventDestroyed, microvm.EventCrashed, microvm.EventDestroyed}
	var types []microvm.EventType
	for range wantTypes {
		select {
		case e := <-local:
			types = append(types, e.Type)
		case <-time.After(10 * time.Second):
			t.Fatalf("local subscriber got only %v", types)
		}
	}
	if fmt.Sprint(types) != fmt.Sprint(wantTypes) {
		t.Errorf("local subscriber: %v", types)
	}
	rt.Close()
	for e := range local {
		t.Errorf("extra event %+v", e)
	}
}

// BenchmarkCrashToSubscriber measures the time from SIGKILL of a VM's
// firecracker to its crashed event at a subscriber (same process; the
// crash watcher, the record, the event log and inotify in between).
func BenchmarkCrashToSubscriber(b *testing.B) {
	ctx := context.Background()
	rt := open(b, b.TempDir(), standin(b))
	defer func() { destroyAll(b, rt); rt.Close() }()
	ch, err := rt.Events(ctx, nil)
	if err != nil {
		b.Fatal(err)
	}
	spec := testSpec(b)
	if _, err := rt.Create(ctx, "bc", spec); err != nil {
		b.Fatal(err)
	}
	<-ch
	var total time.Duration
	for b.Loop() {
		b.StopTimer()
		if _, err := rt.Start(ctx, "bc"); err != nil {
			b.Fatal(err)
		}
		<-ch
		vm, _ := rt.Get(ctx, "bc")
		b.StartTimer()
		t0 := time.Now()
		syscall.Kill(vm.Backend.PID, syscall.SIGKILL)
		for e := range ch {
			if e.Type == microvm.EventCrashed {
				break
			}
		}
		total += time.Since(t0)
	}
	b.ReportMetric(float64(total.Microseconds())/float64(b.N), "µs/crash")
}
