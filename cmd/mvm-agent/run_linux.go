package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"os/signal"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mvm-dev/microvm/agent"
	"github.com/mvm-dev/microvm/vsock"
)

// run serves until a shutdown is asked for. As PID 1 it sets the system up
// first and ends by resetting the machine (it does not return unless that
// fails); otherwise it returns nil on SIGINT, SIGTERM, a poweroff request
// or the end of ctx.
func run(ctx context.Context, cfg config) error {
	pid1 := os.Getpid() == 1
	logf := log.Printf
	if pid1 {
		mountAll(logf)
		reaper = agent.StartReaper()
		if err := catchCtrlAltDel(); err != nil {
			logf("ask for SIGINT on Ctrl-Alt-Del: %v", err)
		}
		if cmdline, err := os.ReadFile("/proc/cmdline"); err != nil {
			logf("read /proc/cmdline: %v", err)
		} else if msg, err := configureNetwork(string(cmdline)); err != nil {
			logf("network: %v", err)
		} else {
			logf("network: %s", msg)
		}
	}
	shutdown := make(chan string, 1)
	ask := func(why string) {
		select {
		case shutdown <- why:
		default:
		}
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, unix.SIGINT, unix.SIGTERM)
	defer signal.Stop(sigs)

	srv := agent.NewServer(cfg.version)
	srv.Shutdown = func() { ask("poweroff request") }
	sctx, stop := context.WithCancel(ctx)
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	defer stop()

	if cfg.port != 0 {
		ln, err := vsock.Listen(cfg.port)
		if err != nil {
			logf("no vsock: %v", err)
		} else {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := srv.Serve(sctx, ln); err != nil {
					logf("vsock: %v", err)
				}
			}()
		}
	}
	if cfg.httpPort != 0 {
		ln, err := vsock.Listen(cfg.httpPort)
		if err != nil {
			logf("no vsock for the HTTP API: %v", err)
		} else {
			svc := &agent.Service{Version: cfg.version, Reaper: reaper, SecretsDir: cfg.secretsDir}
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := svc.Serve(sctx, ln); err != nil {
					logf("vsock HTTP API: %v", err)
				}
			}()
		}
	}
	consolePath := cfg.console
	if consolePath == "" && pid1 {
		consolePath = "/dev/console"
	}
	out := os.Stdout
	if consolePath != "" && consolePath != "none" {
		con, err := openConsole(consolePath)
		if err != nil {
			logf("console: %v", err)
		} else {
			out = con
			log.SetOutput(con)
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer con.Close()
				serveConsole(sctx, srv, con, logf)
			}()
		}
	}
	fmt.Fprintf(out, "%s %s\n", agent.ReadyMarker, cfg.version)

	var why string
	select {
	case sig := <-sigs:
		why = "signal " + unix.SignalName(sig.(unix.Signal))
	case why = <-shutdown:
	case <-ctx.Done():
		why = "context ended"
	}
	fmt.Fprintf(out, "%s (%s)\n", agent.ShutdownMarker, why)
	stop()
	if !pid1 {
		return nil
	}
	log.SetOutput(os.Stderr) // the console server's descriptor is closed
	// Give the answer to a poweroff request time to leave through the
	// virtqueues before the machine resets.
	time.Sleep(100 * time.Millisecond)
	err := shutdownSystem(logf)
	logf("%v; halting here", err)
	select {} // PID 1 must not exit
}

// openConsole opens the console device for reading and writing, on Go's
// poller (so closing it stops a blocked read), in raw mode.
func openConsole(path string) (*os.File, error) {
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	f := os.NewFile(uintptr(fd), path)
	if err := rawConsole(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("raw mode on %s: %w", path, err)
	}
	return f, nil
}

// serveConsole serves requests from the console until ctx ends. The
// console's "EOF" (no input attached, a hang-up) is not an end: it is
// retried after a pause, since input may come later.
func serveConsole(ctx context.Context, srv *agent.Server, con *os.File, logf func(string, ...any)) {
	stop := context.AfterFunc(ctx, func() { con.Close() })
	defer stop()
	for ctx.Err() == nil {
		err := srv.ServeConn(ctx, con)
		if ctx.Err() != nil || errors.Is(err, os.ErrClosed) {
			return
		}
		if err != nil {
			logf("console: %v", err)
		}
		select {
		case <-ctx.Done():
		case <-sleepCh():
		}
	}
}

// sleepCh is the pause between console retries.
func sleepCh() <-chan time.Time { return time.After(time.Second) }
