// Command mvm drives Firecracker microVMs on one Linux host: create, start,
// stop, pause, resume, snapshot, restore and destroy them, read their
// console, check the host (doctor) and run the whole lifecycle once (demo).
//
// Each invocation is a new process: VMs live on in their own firecracker
// processes and the next mvm command adopts them from the state directory.
//
// Exit status: 0 on success, 1 when the operation failed, 2 on a usage
// error: anything wrong with the command line itself, found before any
// operation is tried (an unknown command or flag, a missing, empty or
// malformed argument, a negative count or duration, a VM spec or id that
// breaks a rule). An error is one line on stderr, naming the flag or
// argument at fault in the command line's terms; with --verbose the lines
// firecracker wrote last before the failure follow it (for a VM that
// still exists, `mvm inspect` shows them as last_error_detail and `mvm
// logs` shows its whole output).
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"sync/atomic"
	"syscall"

	microvm "github.com/mvm-dev/microvm"
)

func main() {
	ctx, cancel := context.WithCancel(context.Background())
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go interrupts(sigs, cancel, os.Stderr, os.Exit)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	signal.Stop(sigs)
	cancel()
	os.Exit(code)
}

// interrupts handles ^C (and SIGTERM): the first cancels the command's
// context, so the operation stops cleanly (it ends, or is undone); a
// second ends mvm at once, with status 128+signal, for when the clean way
// takes too long. What an operation cut short leaves behind is marked in
// its VM's record and finished or undone by the next command that touches
// the VM.
func interrupts(sigs <-chan os.Signal, cancel func(), stderr io.Writer, exit func(int)) {
	<-sigs
	if !endsOnInterrupt.Load() {
		fmt.Fprintf(stderr, "mvm: interrupted: stopping cleanly (interrupt again to exit at once)\n")
	}
	cancel()
	s := <-sigs
	fmt.Fprintf(stderr, "mvm: interrupted again: exiting now (the next command that touches the VM finishes or undoes what was cut short)\n")
	code := 130
	if sig, ok := s.(syscall.Signal); ok {
		code = 128 + int(sig)
	}
	exit(code)
}

// endsOnInterrupt is set by a command that runs until ^C (events, stats
// --watch): ^C is its normal end, which needs no message.
var endsOnInterrupt atomic.Bool

// run executes the command line args and returns the exit status.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cmd, g := newRootCmd(stdout, stderr)
	cmd.SetArgs(args)
	err := cmd.ExecuteContext(ctx)
	if err == nil {
		return 0
	}
	var st interface{ ExitCode() int }
	if errors.As(err, &st) {
		return st.ExitCode() // mvm exec: the guest command's status
	}
	err = inUserTerms(egressMissingErr(g, err))
	fmt.Fprintln(stderr, "mvm: "+oneLine(err.Error()))
	var oe *microvm.OpError
	if g.verbose && errors.As(err, &oe) {
		for _, l := range oe.Detail {
			fmt.Fprintln(stderr, "  | "+oneLine(l))
		}
	}
	var u *usageError
	if errors.As(err, &u) || isCobraUsageError(err) || isInputError(err) {
		return 2
	}
	return 1
}

// isInputError recognises the library's refusals of what the command line
// gave it, before any operation: a spec or an id that breaks a rule.
func isInputError(err error) bool {
	return errors.Is(err, microvm.ErrInvalidSpec) || errors.Is(err, microvm.ErrInvalidID)
}

// isCobraUsageError recognises the usage errors cobra makes itself without a
// hook to type them: unknown commands and missing required flags.
func isCobraUsageError(err error) bool {
	msg := err.Error()
	return strings.HasPrefix(msg, "unknown command ") || strings.HasPrefix(msg, "required flag(s) ")
}

// usageError marks an error in how mvm was called (exit status 2).
type usageError struct{ err error }

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

func usagef(format string, a ...any) error { return &usageError{fmt.Errorf(format, a...)} }

// oneLine makes s one line: cobra's suggestions of an unknown command
// ("\n\nDid you mean this?\n\tstart\n\tstats\n") become "; did you mean
// start or stats?", the lines of several errors (errors.Join) are joined by
// "; ", and tabs become spaces.
func oneLine(s string) string {
	if head, tail, ok := strings.Cut(s, "\n\nDid you mean this?\n"); ok {
		if names := strings.Fields(tail); len(names) > 0 {
			alt := names[len(names)-1]
			if len(names) > 1 {
				alt = strings.Join(names[:len(names)-1], ", ") + " or " + alt
			}
			s = head + "; did you mean " + alt + "?"
		}
	}
	var lines []string
	for _, l := range strings.FieldsFunc(s, func(r rune) bool { return r == '\n' || r == '\r' }) {
		if l = strings.TrimSpace(strings.ReplaceAll(l, "\t", " ")); l != "" {
			lines = append(lines, l)
		}
	}
	return strings.Join(lines, "; ")
}
