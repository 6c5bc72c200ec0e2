package eventlog

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	microvm "github.com/mvm-dev/microvm"
)

// childEnv makes the test binary a subscriber: it follows the log in the
// directory named by the variable and prints each event as a JSON line.
const childEnv = "EVENTLOG_TEST_FOLLOW"

func init() {
	dir := os.Getenv(childEnv)
	if dir == "" {
		return
	}
	l, err := Open(dir, 0)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	ch, err := l.Follow(context.Background(), time.Time{}, nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	fmt.Println("ready")
	enc := json.NewEncoder(os.Stdout)
	for e := range ch {
		enc.Encode(e)
	}
	os.Exit(0)
}

func ev(vm string, i int) microvm.Event {
	return microvm.Event{Time: time.Unix(int64(1000+i), 0).UTC(), VM: vm, Type: microvm.EventStarted, Status: microvm.StatusRunning, Reason: fmt.Sprint(i)}
}

// recv takes the next event or fails after 10 s.
func recv(t *testing.T, ch <-chan microvm.Event) microvm.Event {
	t.Helper()
	select {
	case e, ok := <-ch:
		if !ok {
			t.Fatal("closed")
		}
		return e
	case <-time.After(10 * time.Second):
		t.Fatal("no event in 10s")
	}
	return microvm.Event{}
}

// A subscriber in another process sees every event of several writers,
// in each writer's order, across many rotations of a small log; the
// files stay within the bound.
func TestFollowAcrossProcessesAndRotations(t *testing.T) {
	dir := t.TempDir()
	const maxBytes = 32 << 10
	l, err := Open(dir, maxBytes)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+dir)
	out, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	sc := bufio.NewScanner(out)
	if !sc.Scan() || sc.Text() != "ready" {
		t.Fatalf("child: %q", sc.Text())
	}
	const writers, each = 3, 150
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				if err := l.Append(ev(fmt.Sprint("vm", w), i)); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	next := map[string]int{}
	for n := 0; n < writers*each; n++ {
		if !sc.Scan() {
			t.Fatalf("child ended after %d events", n)
		}
		var e microvm.Event
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatal(err)
		}
		if e.Reason != fmt.Sprint(next[e.VM]) {
			t.Fatalf("%s: event %s, want %d", e.VM, e.Reason, next[e.VM])
		}
		next[e.VM]++
	}
	wg.Wait()
	var total int64
	for _, f := range []string{fileLog, fileOld} {
		if fi, err := os.Stat(filepath.Join(dir, f)); err == nil {
			total += fi.Size()
		}
	}
	if total > maxBytes {
		t.Errorf("log holds %d bytes, bound %d", total, maxBytes)
	}
	if _, err := os.Stat(filepath.Join(dir, fileOld)); err != nil {
		t.Errorf("never rotated: %v", err)
	}
}

// Since replays the kept events (both generations) in order, skipping
// older ones and lines that are not events, then follows.
func TestReplaySince(t *testing.T) {
	dir := t.TempDir()
	l, _ := Open(dir, 4<<10)
	for i := range 30 {
		if err := l.Append(ev("a", i)); err != nil {
			t.Fatal(err)
		}
	}
	f, _ := os.OpenFile(filepath.Join(dir, fileLog), os.O_WRONLY|os.O_APPEND, 0)
	f.WriteString("garbage\n{\"type\":\"exploded\"}\n")
	f.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	ch, err := l.Follow(ctx, time.Unix(1010, 0), func() { close(done) })
	if err != nil {
		t.Fatal(err)
	}
	first := recv(t, ch)
	if first.Reason == "" || first.Time.Before(time.Unix(1010, 0)) {
		t.Fatalf("first replayed %+v", first)
	}
	prev := first
	for prev.Reason != "29" {
		e := recv(t, ch)
		if !e.Time.After(prev.Time) {
			t.Fatalf("out of order: %v after %v", e.Time, prev.Time)
		}
		prev = e
	}
	l.Append(ev("a", 30))
	if e := recv(t, ch); e.Reason != "30" {
		t.Fatalf("live %+v", e)
	}
	cancel()
	<-done
	for range ch {
	}
}

// BenchmarkDelivery measures append to delivery to a follower.
func BenchmarkDelivery(b *testing.B) {
	l, _ := Open(b.TempDir(), 0)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch, err := l.Follow(ctx, time.Time{}, nil)
	if err != nil {
		b.Fatal(err)
	}
	for i := 0; b.Loop(); i++ {
		if err := l.Append(ev("a", i)); err != nil {
			b.Fatal(err)
		}
		<-ch
	}
}
