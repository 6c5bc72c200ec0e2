package server

import (
	"fmt"
	"io"
	"os"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// die ends the process abnormally the way a crashing Firecracker does: it
// writes line to stderr, then kills itself with sig (SIGABRT for a Rust
// panic, SIGSEGV/SIGBUS for memory faults) with the default action, so the
// parent sees "terminated by signal". No core file is written (RLIMIT_CORE
// is set to 0 first). If the signal somehow does not kill the process, it
// falls back to SIGKILL and finally to exit status 128+sig.
func die(stderr io.Writer, sig unix.Signal, line string) {
	fmt.Fprintln(stderr, line)
	if f, ok := stderr.(*os.File); ok {
		_ = f.Sync()
	}
	_ = unix.Setrlimit(unix.RLIMIT_CORE, &unix.Rlimit{})
	// struct sigaction with sa_handler = SIG_DFL; zeroed is enough on every
	// 64-bit Linux architecture.
	var act [4]uint64
	_, _, _ = unix.RawSyscall6(unix.SYS_RT_SIGACTION, uintptr(sig), uintptr(unsafe.Pointer(&act[0])), 0, 8, 0, 0)
	var set unix.Sigset_t
	sigaddset(&set, sig)
	_ = unix.PthreadSigmask(unix.SIG_UNBLOCK, &set, nil)
	_ = unix.Kill(os.Getpid(), sig)
	time.Sleep(200 * time.Millisecond)
	_ = unix.Kill(os.Getpid(), unix.SIGKILL)
	time.Sleep(200 * time.Millisecond)
	os.Exit(128 + int(sig))
}

func sigaddset(set *unix.Sigset_t, sig unix.Signal) {
	n := uint(sig) - 1
	set.Val[n/64] |= 1 << (n % 64)
}

// panicLine formats a Rust-panic-like stderr line.
func panicLine(thread, msg string) string {
	return fmt.Sprintf("thread '%s' panicked at src/vmm/src/lib.rs:1:1:\n%s\nnote: fcstandin crash on demand (FCSTANDIN_CRASH)", thread, msg)
}
