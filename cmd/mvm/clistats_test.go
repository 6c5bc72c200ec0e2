// This file sorts before net_test.go on purpose: TestNetworkCLI removes the
// cached stand-in build in its cleanup, which breaks later tests of the package.

package main

import (
	"bufio"
	"encoding/json"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mvm-dev/microvm/internal/fcstandin"
)

// background starts mvm args as a process and returns its stdout lines.
func (c *cli) background(args ...string) (*exec.Cmd, <-chan string) {
	c.t.Helper()
	full := append([]string{"--state-dir", c.stateDir, "--firecracker-bin", c.fc}, args...)
	cmd := exec.Command(c.bin, full...)
	cmd.Env = c.env
	out, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	lines := make(chan string, 1000)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	return cmd, lines
}

func waitLine(t *testing.T, lines <-chan string, match func(string) bool) string {
	t.Helper()
	timeout := time.After(15 * time.Second)
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatal("output ended")
			}
			if match(l) {
				return l
			}
		case <-timeout:
			t.Fatal("no matching line in 15s")
		}
	}
}

// interrupt sends SIGINT and checks a clean exit (status 0).
func interrupt(t *testing.T, cmd *exec.Cmd) {
	t.Helper()
	cmd.Process.Signal(syscall.SIGINT)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("mvm %v after SIGINT: %v", cmd.Args[5:], err)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("mvm %v did not exit on SIGINT", cmd.Args[5:])
	}
}

func TestCLIStatsAndEvents(t *testing.T) {
	c := newCLI(t)
	kernel, rootfs := images(t)
	// A subscriber from the start (--since covers what happens before it
	// has subscribed).
	evCmd, evLines := c.background("events", "-o", "json", "--since", "1h")
	c.ok("create", "cli-a", "--kernel", kernel, "--rootfs", rootfs, "--memory", "32")
	c.ok("start", "cli-a")

	var rows []statsRow
	out := c.ok("stats", "cli-a", "-o", "json", "--interval", "100ms")
	if err := json.Unmarshal([]byte(out), &rows); err != nil || len(rows) != 1 {
		t.Fatalf("stats json: %v\n%s", err, out)
	}
	r := rows[0]
	if r.ID != "cli-a" || r.Process == nil || r.Process.RSSBytes == 0 || r.Hypervisor == nil {
		t.Fatalf("stats row %+v", r)
	}
	// Two samples, each a flush: the stand-in's guest read one block per flush.
	if d := r.Hypervisor.Drives["rootfs"]; d.ReadBytes != 2*fcstandin.GuestReadBytes || r.DiskReadRate <= 0 {
		t.Fatalf("rootfs %+v, read rate %v", d, r.DiskReadRate)
	}
	table := c.ok("stats", "--interval", "50ms")
	if !strings.Contains(table, "NAME") || !strings.Contains(table, "cli-a") || !strings.Contains(table, "KiB") {
		t.Fatalf("stats table:\n%s", table)
	}

	// --watch renders table after table and exits cleanly on ^C.
	wCmd, wLines := c.background("stats", "--watch", "--interval", "50ms")
	for range 3 {
		waitLine(t, wLines, func(l string) bool { return strings.HasPrefix(l, "NAME") })
		waitLine(t, wLines, func(l string) bool { return strings.HasPrefix(l, "cli-a") })
	}
	interrupt(t, wCmd)

	c.ok("stop", "cli-a")
	for _, want := range []string{"created", "started", "stopped"} {
		l := waitLine(t, evLines, func(string) bool { return true })
		var e struct{ VM, Type, Status string }
		if err := json.Unmarshal([]byte(l), &e); err != nil || e.VM != "cli-a" || e.Type != want {
			t.Fatalf("event line %q, want %s", l, want)
		}
	}
	interrupt(t, evCmd)

	// --since replays; the table form names VM, event and status.
	rCmd, rLines := c.background("events", "--since", "1h")
	waitLine(t, rLines, func(l string) bool { return strings.Contains(l, "cli-a  created  created") })
	waitLine(t, rLines, func(l string) bool { return strings.Contains(l, "cli-a  stopped  stopped") })
	interrupt(t, rCmd)

	for _, args := range [][]string{
		{"stats", "--interval", "0s"}, {"stats", "bad_id"}, {"events", "--since", "soon"}, {"events", "a", "b"}, {"events", "bad_id"},
	} {
		if code, _, errs := c.run(args...); code != 2 {
			t.Errorf("mvm %v: exit %d (%s), want 2", args, code, errs)
		}
	}
	if code, _, errs := c.run("stats", "nope"); code != 1 || !strings.Contains(errs, "not found") {
		t.Errorf("stats of an unknown VM: exit %d %q", code, errs)
	}
}

// TestFollowEndsQuietlyOnInterrupt: ^C is how events and stats --watch
// end, so it ends them with status 0 and nothing on stderr (no "stopping
// cleanly, interrupt again" as for an operation cut short).
func TestFollowEndsQuietlyOnInterrupt(t *testing.T) {
	c := newCLI(t)
	kernel, rootfs := images(t)
	c.ok("create", "cli-a", "--kernel", kernel, "--rootfs", rootfs, "--memory", "32")
	for _, f := range []struct {
		args []string
		line string // a line it prints once it follows
	}{
		{[]string{"events", "--since", "1h"}, "cli-a  created"},
		{[]string{"stats", "--watch", "--interval", "50ms"}, "cli-a"},
	} {
		cmd := exec.Command(c.bin, append([]string{"--state-dir", c.stateDir, "--firecracker-bin", c.fc}, f.args...)...)
		cmd.Env = c.env
		var stderr strings.Builder
		cmd.Stderr = &stderr
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(out)
		for sc.Scan() && !strings.Contains(sc.Text(), f.line) {
		}
		if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
			t.Fatal(err)
		}
		for sc.Scan() { // to the end of its output
		}
		err = cmd.Wait()
		if err != nil || stderr.Len() != 0 {
			t.Errorf("mvm %v after ^C: %v, stderr %q; want status 0 and no message", f.args, err, stderr.String())
		}
	}
}
