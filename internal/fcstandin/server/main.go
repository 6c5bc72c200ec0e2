package server

import (
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"github.com/mvm-dev/microvm/internal/fcstandin"
	"golang.org/x/sys/unix"
)

// Main runs the stand-in firecracker with args (without the program name)
// and returns the process exit status. It only returns when the emulated
// Firecracker exits; crashes terminate the process directly.
func Main(args []string, stdout, stderr io.Writer) int {
	log.SetOutput(io.Discard) // net/http chatter is not Firecracker output
	stopProfile := startupProfile(os.Getenv("FCSTANDIN_CPUPROFILE"))
	defer stopProfile()
	// Start-up allocates a few short-lived megabytes (the spec); collecting
	// them before the API is ready only costs CPU. Collection resumes once
	// the socket accepts and the validator is loaded.
	gcPercent := debug.SetGCPercent(-1)
	startupGC := sync.OnceFunc(func() { debug.SetGCPercent(gcPercent) })
	defer startupGC()
	o, err := ParseArgs(args, os.Getenv)
	if err != nil {
		msg := strings.TrimPrefix(err.Error(), ErrUsage.Error()+": ")
		if errors.Is(err, ErrUsage) && !strings.HasPrefix(msg, "FCSTANDIN_") && !strings.HasPrefix(msg, "Invalid instance ID") {
			msg = "Arguments parsing error: " + msg
		}
		fmt.Fprintln(stderr, msg)
		return 1
	}
	if o.IgnoreStop {
		signal.Ignore(unix.SIGTERM, unix.SIGINT)
	}
	if o.SpecDir == "" {
		exe, _ := os.Executable()
		wd, _ := os.Getwd()
		o.SpecDir, err = fcstandin.FindSpecDir(os.Getenv, wd, filepath.Dir(exe))
		if err != nil {
			fmt.Fprintln(stderr, err)
			return 1
		}
	}
	exitCh := make(chan int, 1)
	exit := func(code int) {
		select {
		case exitCh <- code:
		default:
		}
	}
	// With a cached document the API socket comes up while the validator
	// loads; requests wait for it.
	spec, err := openSpec(o.SpecDir, o.API, defaultSpecCache(o.SpecCache), func(err error) {
		fmt.Fprintf(stderr, "fcstandin: %v\n", err)
		exit(1)
	})
	if err != nil {
		fmt.Fprintf(stderr, "fcstandin: %v\n", err)
		return 1
	}
	if o.ShowVersion {
		fmt.Fprintf(stdout, "Firecracker v%s\n\n", spec.version)
		return 0
	}
	v := newVMM(o, spec, stdout, stderr, exit)
	v.log(lvlInfo, "main", "src/firecracker/src/main.rs:1", "Running Firecracker v"+spec.version)
	if err := v.configureFromFlags(); err != nil {
		fmt.Fprintf(stderr, "%v\n", err)
		return 1
	}
	if o.StartDelay > 0 {
		time.Sleep(o.StartDelay)
	}
	if _, err := os.Lstat(o.APISock); err == nil {
		fmt.Fprintf(stderr, "Failed to open the API socket at: %s. Check that it is not already used.\n", o.APISock)
		return 1
	}
	ln, err := net.Listen("unix", o.APISock)
	if err != nil {
		fmt.Fprintf(stderr, "Failed to open the API socket at: %s. Check that it is not already used.\n", o.APISock)
		return 1
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false) // Firecracker leaves the socket behind
	go func() {
		spec.wait()
		startupGC()
		stopProfile()
	}()
	startup := time.Since(processStart)
	v.metrics.store("api_server", "process_startup_time_us", uint64(startup.Microseconds()))
	v.metrics.store("api_server", "process_startup_time_cpu_us", uint64(cpuTimeUs()))
	h := &apiHandler{vm: v, maxPayload: o.MaxPayload}
	go func() {
		if err := serveAPI(ln, h); err != nil {
			fmt.Fprintf(stderr, "fcstandin: API server: %v\n", err)
			exit(1)
		}
	}()
	code := <-exitCh
	ln.Close()
	return code
}

var processStart = time.Now()

// configureFromFlags applies --log-path/--level/... and --metrics-path;
// both then count as configured (PUT /logger and PUT /metrics fail).
func (v *vmm) configureFromFlags() error {
	o := v.opts
	if o.LogPath != "" || o.Level != "" || o.ShowLevel || o.ShowLogOrigin || o.Module != "" {
		v.loggerSet = true
		v.logger.mu.Lock()
		if o.Level != "" {
			v.logger.level, _ = parseLevel(o.Level)
		}
		v.logger.showLevel = o.ShowLevel
		v.logger.showOrigin = o.ShowLogOrigin
		v.logger.module = o.Module
		v.logger.mu.Unlock()
		if o.LogPath != "" {
			f, err := openNonblockExisting(o.LogPath)
			if err != nil {
				return fmt.Errorf("Logger error: Failed to open target file: %s", osErr(err))
			}
			v.logger.mu.Lock()
			v.logger.target = f
			v.logger.mu.Unlock()
		}
	}
	if o.MetricsPath != "" {
		f, err := openNonblockExisting(o.MetricsPath)
		if err != nil {
			return fmt.Errorf("Metrics error: %s", osErr(err))
		}
		v.metricsSet = true
		v.metrics.file = f
	}
	return nil
}

func cpuTimeUs() int64 {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return ru.Utime.Sec*1e6 + int64(ru.Utime.Usec) + ru.Stime.Sec*1e6 + int64(ru.Stime.Usec)
}
