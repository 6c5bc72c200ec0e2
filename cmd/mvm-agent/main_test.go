package main

import (
	"bufio"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mvm-dev/microvm/agent"
	"github.com/mvm-dev/microvm/internal/guesttest"
)

// TestSignalShutdown runs the built agent as a service (not PID 1) with a
// vsock listener and no console: it prints the ready marker on stdout, and
// SIGINT — what the kernel sends PID 1 on Ctrl-Alt-Del — makes it print
// the shutdown marker and exit 0.
func TestSignalShutdown(t *testing.T) {
	bin := guesttest.Agent(t)
	if out, err := exec.Command(bin, "-version").Output(); err != nil || strings.TrimSpace(string(out)) != guesttest.AgentVersion {
		t.Fatalf("-version = %q, %v", out, err)
	}
	if err := exec.Command(bin, "-bogus").Run(); err == nil {
		t.Fatal("an unknown flag was accepted")
	} else if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 {
		t.Fatalf("unknown flag: %v, want exit status 2", err)
	}
	cmd := exec.Command(bin, "-port", "40962", "-console", "none")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 16)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	select {
	case l := <-lines:
		if l != agent.ReadyMarker+" "+guesttest.AgentVersion {
			t.Fatalf("first line %q, want the ready marker", l)
		}
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("no ready marker; stderr: %s", stderr.String())
	}
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	var rest []string
	for l := range lines {
		rest = append(rest, l)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("agent after SIGINT: %v (stderr %s)", err, stderr.String())
	}
	if got := strings.Join(rest, "\n"); got != agent.ShutdownMarker+" (signal SIGINT)" {
		t.Errorf("output after SIGINT = %q, want the shutdown marker", got)
	}
}
