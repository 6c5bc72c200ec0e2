package guesttest

import (
	"bytes"
	"context"
	"io"
	"os/exec"
	"testing"
	"time"

	"github.com/mvm-dev/microvm/agent"
)

// QEMU is a guest booted with QEMU's emulator (TCG: no KVM needed), its
// serial console on QEMU's standard input and output.
type QEMU struct {
	// Console is the guest's serial output.
	Console *Serial
	// Agent talks to the guest agent over the serial console.
	Agent *agent.Client

	stderr bytes.Buffer
	done   chan struct{}
	err    error // QEMU's exit (cmd.Wait), once done is closed
}

// StartQEMU boots kernel with the command line cmdline (console=ttyS0 is
// the caller's to give) under qemu-system-x86_64 -M q35 with 128 MiB and
// one vCPU, no reboot (a guest reset ends QEMU) and the further QEMU
// arguments args (drives, network). The test is skipped when QEMU is
// missing (fails when CI=true). QEMU ends with ctx; the test's cleanup
// ends it and waits for it, and logs the console and QEMU's standard
// error if the test failed.
func StartQEMU(ctx context.Context, t testing.TB, kernel, cmdline string, args ...string) *QEMU {
	t.Helper()
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		missing(t, "qemu-system-x86_64 not found: install qemu-system-x86 (.ci/run does) to boot the guest image under emulation")
	}
	ctx, cancel := context.WithCancel(ctx)
	base := []string{"-M", "q35", "-accel", "tcg", "-m", "128", "-smp", "1",
		"-nodefaults", "-no-reboot", "-display", "none", "-monitor", "none", "-serial", "stdio",
		"-kernel", kernel, "-append", cmdline}
	cmd := exec.CommandContext(ctx, qemu, append(base, args...)...)
	q := &QEMU{Console: NewSerial(), done: make(chan struct{})}
	cmd.Stderr = &q.stderr
	cmd.WaitDelay = 5 * time.Second
	stdin, err := cmd.StdinPipe()
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatalf("start qemu: %v", err)
	}
	go func() {
		io.Copy(q.Console, stdout)
		q.Console.Close()
		q.err = cmd.Wait()
		close(q.done)
	}()
	t.Cleanup(func() {
		cancel()
		<-q.done
		if t.Failed() {
			t.Logf("guest console:\n%s\nqemu stderr:\n%s", q.Console.String(), q.stderr.String())
		}
	})
	q.Agent = agent.NewClient(serialConn{Reader: q.Console, WriteCloser: stdin})
	return q
}

// Done is closed when QEMU has exited; Err then says how.
func (q *QEMU) Done() <-chan struct{} { return q.done }

// Err is QEMU's exit error (nil for status 0), once Done is closed.
func (q *QEMU) Err() error { return q.err }

// serialConn joins the guest's serial output and QEMU's stdin.
type serialConn struct {
	io.Reader
	io.WriteCloser
}
