//go:build linux

// Command mvm-uffd serves the guest memory of one Firecracker VM restored
// from a snapshot with the Uffd memory backend.
//
// The Firecracker runtime starts it detached (uffd.Spawn) before
// PUT /snapshot/load; it listens on --socket, accepts Firecracker's single
// connection, serves page faults from --mem-file, prefetches the rest in the
// background, unregisters guest memory once it is all present (so the VM no
// longer needs it), and exits when Firecracker exits. See package uffd.
//
// Readiness: once the socket is listening it writes "ready\n" to --ready-fd,
// or to stdout when --ready-fd is not given. Logs go to stderr (slog text).
//
// Exit status: 0 when Firecracker went away or on SIGTERM/SIGINT, 1 on a
// serving error (the peer is killed first unless --kill-peer-on-error=false
// or guest memory was already detached), 2 for bad flags or setup errors,
// 3 when nobody connected within --accept-timeout, 4 for a bad handshake
// (the peer is not killed: it may not be Firecracker; a supervisor seeing 4
// must stop the VM it started).
//
// Stopping it (SIGTERM) while guest memory is still registered, that is
// before the log says "detached", leaves the VM to hang on its next missing
// page: stop Firecracker first, and the handler follows by itself.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/mvm-dev/microvm/uffd"
)

func main() { os.Exit(run(os.Args[1:])) }

func run(args []string) int {
	fs := flag.NewFlagSet("mvm-uffd", flag.ContinueOnError)
	var (
		socket     = fs.String("socket", "", "unix socket to listen on (Firecracker's mem_backend.backend_path)")
		memFile    = fs.String("mem-file", "", "snapshot memory file to serve")
		timeout    = fs.Duration("accept-timeout", uffd.DefaultAcceptTimeout, "how long to wait for Firecracker to connect and send its handshake")
		noPrefetch = fs.Bool("no-prefetch", false, "serve faults only; do not copy the rest of memory in the background")
		noDetach   = fs.Bool("no-detach", false, "keep guest memory registered after the prefetch has made it all present")
		populate   = fs.Bool("populate", false, "pre-fault the memory file mapping")
		peerPID    = fs.Int("peer-pid", 0, "only accept a connection from this pid")
		readyFD    = fs.Int("ready-fd", -1, "write \"ready\\n\" to this fd once listening (default: stdout)")
		pidfile    = fs.String("pidfile", "", "write the process id to this file while running")
		logLevel   = fs.String("log-level", "info", "debug, info, warn or error")
		killPeer   = fs.Bool("kill-peer-on-error", true, "SIGKILL Firecracker if serving fails before memory is detached (it would hang otherwise)")
	)
	if err := fs.Parse(args); err != nil {
		return 2
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		fmt.Fprintf(os.Stderr, "mvm-uffd: --log-level %q: must be debug, info, warn or error\n", *logLevel)
		return 2
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})).With("socket", *socket)
	if fs.NArg() > 0 {
		log.Error("mvm-uffd: unexpected arguments", "args", fs.Args())
		return 2
	}
	if *socket == "" || *memFile == "" {
		log.Error("mvm-uffd: --socket and --mem-file are required")
		return 2
	}

	srv, err := uffd.Listen(uffd.Config{
		SocketPath:    *socket,
		MemFile:       *memFile,
		AcceptTimeout: *timeout,
		Prefetch:      !*noPrefetch,
		Detach:        !*noDetach,
		Populate:      *populate,
		PeerPID:       *peerPID,
		Logger:        log,
	})
	if err != nil {
		log.Error("mvm-uffd: listen", "err", err)
		return 2
	}
	defer srv.Close()
	if *pidfile != "" {
		if err := writePidfile(*pidfile); err != nil {
			log.Error("mvm-uffd: pidfile", "err", err)
			return 2
		}
		defer os.Remove(*pidfile)
	}
	if err := signalReady(*readyFD); err != nil {
		log.Error("mvm-uffd: readiness", "err", err)
		return 2
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	signal.Ignore(syscall.SIGHUP, syscall.SIGPIPE)
	start := time.Now()
	err = srv.Serve(ctx)
	st := srv.Stats()
	attrs := []any{"peer_pid", srv.PeerPID(), "uptime", time.Since(start).Round(time.Millisecond),
		"faults", st.Faults, "pages_copied", st.PagesCopied, "zero_pages", st.ZeroPages,
		"removes", st.Removes, "prefetched_bytes", st.PrefetchedBytes, "prefetch_done", st.PrefetchDone,
		"prefetch_duration", st.PrefetchDuration, "detached", st.Detached}
	switch {
	case err == nil:
		log.Info("mvm-uffd: peer exited; done", attrs...)
		return 0
	case errors.Is(err, context.Canceled):
		log.Info("mvm-uffd: stopped by signal", attrs...)
		return 0
	case errors.Is(err, uffd.ErrAcceptTimeout):
		log.Error("mvm-uffd: giving up", append(attrs, "err", err)...)
		return 3
	case errors.Is(err, uffd.ErrBadHandshake):
		log.Error("mvm-uffd: rejected handshake", append(attrs, "err", err)...)
		return 4
	}
	log.Error("mvm-uffd: serving failed", append(attrs, "err", err)...)
	if *killPeer && srv.PeerPID() > 0 && !st.Detached {
		if kerr := srv.KillPeer(); kerr != nil {
			log.Error("mvm-uffd: kill peer", "peer_pid", srv.PeerPID(), "err", kerr)
		} else {
			log.Warn("mvm-uffd: killed peer so the VM does not hang", "peer_pid", srv.PeerPID())
		}
	}
	return 1
}

func signalReady(fd int) error {
	if fd < 0 {
		_, err := fmt.Fprintln(os.Stdout, "ready")
		return err
	}
	f := os.NewFile(uintptr(fd), "ready-fd")
	if f == nil {
		return fmt.Errorf("--ready-fd %d: not a valid file descriptor", fd)
	}
	defer f.Close()
	if _, err := f.WriteString("ready\n"); err != nil {
		return fmt.Errorf("--ready-fd %d: %w", fd, err)
	}
	return nil
}

// writePidfile writes the pid atomically (temp file + rename).
func writePidfile(path string) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	_, err = tmp.WriteString(strconv.Itoa(os.Getpid()) + "\n")
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		os.Remove(tmp.Name())
	}
	return err
}
