package bench

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	sdk "github.com/firecracker-microvm/firecracker-go-sdk"
	models "github.com/firecracker-microvm/firecracker-go-sdk/client/models"
	"github.com/sirupsen/logrus"
)

// sdkLauncher drives the stand-in through firecracker-go-sdk v1.0.0 the
// way its README does: NewMachine with a Config, then Machine.Start.
//
// SDK v1.0.0 behaviour that shapes the numbers (see
// ~/go/pkg/mod/github.com/firecracker-microvm/firecracker-go-sdk@v1.0.0):
//
//   - Readiness: after cmd.Start, waitForSocket polls with a 10 ms
//     time.Ticker (first look 10 ms after spawn), os.Stat's the socket
//     and then sends GET /machine-config as a probe. Readiness is thus
//     quantised to 10 ms ticks, and the probe is an extra round trip.
//   - Init timeout: 3 s by default (FIRECRACKER_GO_SDK_INIT_TIMEOUT_SECONDS,
//     whole seconds only); each API call 500 ms
//     (FIRECRACKER_GO_SDK_REQUEST_TIMEOUT_MILLISECONDS), PUT /drives half
//     of it. On a loaded host (100 processes on 2 cores) these defaults
//     can fire: both are raised to mvm's defaults unless
//     BENCH_SDK_DEFAULT_TIMEOUTS=1.
//   - CreateMachine does PUT /machine-config and then a second
//     GET /machine-config to refresh its cached copy; every call goes
//     through go-openapi (reflection-based marshalling and validation).
//   - No network interface is required: with none, SetupNetwork,
//     CreateNetworkInterfaces and ConfigMmds do nothing and send nothing.
//   - ForwardSignals defaults to SIGINT/QUIT/TERM/HUP/ABRT: every Machine
//     calls signal.Notify and runs a forwarding goroutine. Kept (default).
//   - Seccomp.Enabled defaults to false, so the SDK passes --no-seccomp;
//     with WithProcessRunner the caller builds the command line, so we
//     add --id and --no-seccomp ourselves to match what NewMachine's own
//     builder would pass.
//   - The process is started with exec.CommandContext(ctx): cancelling
//     the context given to NewMachine/Start kills the VM. Each VM
//     therefore gets its own long-lived context here.
//   - Logging is logrus at Info level to stderr by default; we give it a
//     logger at Error level writing to io.Discard (the SDK's best case,
//     and mvm's runtime logs nothing by default either).
//   - Concurrent NewMachine calls race (go test -race): NewMachine always
//     builds a client (before applying options, so WithClient does not
//     help) whose go-openapi transport's SetLogger writes the package
//     global middleware.Logger. Callers creating VMs concurrently must
//     serialise NewMachine; we do (newMachineMu; it costs microseconds).
//     For the same reason the transport logs through a default logrus
//     logger, not the one passed with WithLogger (applied afterwards).
type sdkLauncher struct {
	e   *benchEnv
	dir string // socket directory
	log *logrus.Entry
}

func openSDK(b *testing.B, e *benchEnv) launcher {
	dir, err := os.MkdirTemp(e.scratch, "sdk")
	if err != nil {
		b.Fatal(err)
	}
	if os.Getenv("BENCH_SDK_DEFAULT_TIMEOUTS") != "1" {
		// Same bounds as mvm gets (the SDK reads these at NewMachine).
		b.Setenv("FIRECRACKER_GO_SDK_INIT_TIMEOUT_SECONDS", strconv.Itoa(int(readyTimeout/time.Second)))
		b.Setenv("FIRECRACKER_GO_SDK_REQUEST_TIMEOUT_MILLISECONDS", strconv.Itoa(int(apiTimeout/time.Millisecond)))
	}
	lg := logrus.New()
	lg.Out = io.Discard
	lg.Level = logrus.ErrorLevel
	return &sdkLauncher{e: e, dir: dir, log: logrus.NewEntry(lg)}
}

// sdkVM is one machine of the SDK, with the context its process is tied
// to.
type sdkVM struct {
	m      *sdk.Machine
	id     string
	sock   string
	cancel context.CancelFunc
}

func (s *sdkLauncher) create(_ context.Context, id string, boot bool) (benchVM, error) {
	cfg := s.config(id)
	cfg.KernelImagePath = s.e.kernel
	cfg.KernelArgs = bootArgs
	cfg.Drives = sdk.NewDrivesBuilder(s.e.rootfs).Build()
	cfg.MachineCfg = models.MachineConfiguration{
		VcpuCount:  sdk.Int64(benchVCPUs),
		MemSizeMib: sdk.Int64(benchMemoryMiB),
		Smt:        sdk.Bool(false),
	}
	return s.newMachine(cfg, boot)
}

func (s *sdkLauncher) restore(_ context.Context, id string, snap snapshotRef) (benchVM, error) {
	cfg := s.config(id)
	return s.newMachine(cfg, true, sdk.WithSnapshot(filepath.Join(snap.dir, "mem"), filepath.Join(snap.dir, "state"),
		func(c *sdk.SnapshotConfig) { c.ResumeVM = true }))
}

// config is the part of a machine's Config common to create and restore.
func (s *sdkLauncher) config(id string) sdk.Config {
	return sdk.Config{SocketPath: filepath.Join(s.dir, id+".sock"), VMID: id}
}

// newMachine makes a Machine and starts it: with start, Machine.Start
// (validation, FcInit handlers and InstanceStart, or the snapshot load);
// without, the handlers only (Start minus startInstance: StartVMM,
// CreateLogFiles, BootstrapLogging, CreateMachine, CreateBootSource,
// AttachDrives, ...).
func (s *sdkLauncher) newMachine(cfg sdk.Config, start bool, opts ...sdk.Opt) (benchVM, error) {
	// The SDK ties the process to this context (exec.CommandContext and a
	// goroutine that SIGTERMs on Done), so it must outlive the call.
	vmctx, cancel := context.WithCancel(context.Background())
	cmd := sdk.VMCommandBuilder{}.
		WithBin(s.e.bin).
		WithSocketPath(cfg.SocketPath).
		AddArgs("--id", cfg.VMID, "--no-seccomp").
		Build(vmctx)
	newMachineMu.Lock()
	m, err := sdk.NewMachine(vmctx, cfg, append([]sdk.Opt{sdk.WithProcessRunner(cmd), sdk.WithLogger(s.log)}, opts...)...)
	newMachineMu.Unlock()
	if err != nil {
		cancel()
		return nil, fmt.Errorf("sdk %s: NewMachine: %w", cfg.VMID, err)
	}
	vm := &sdkVM{m: m, id: cfg.VMID, sock: cfg.SocketPath, cancel: cancel}
	if start {
		err = m.Start(vmctx)
	} else {
		err = m.Handlers.Run(vmctx, m)
	}
	if err != nil {
		return vm, fmt.Errorf("sdk %s: start: %w", cfg.VMID, err)
	}
	return vm, nil
}

// start boots a machine made without booting: Machine.Start with the
// handlers (already run) emptied, i.e. InstanceStart alone.
func (v *sdkVM) start(ctx context.Context) error {
	v.m.Handlers.Validation = sdk.HandlerList{}
	v.m.Handlers.FcInit = sdk.HandlerList{}
	if err := v.m.Start(ctx); err != nil {
		return fmt.Errorf("sdk %s: start: %w", v.id, err)
	}
	return nil
}

// stop is the SDK's graceful stop: Shutdown (Ctrl-Alt-Del), then Wait.
func (v *sdkVM) stop(ctx context.Context) error {
	if err := v.m.Shutdown(ctx); err != nil {
		return fmt.Errorf("sdk %s: shutdown: %w", v.id, err)
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := v.m.Wait(wctx); err != nil {
		return fmt.Errorf("sdk %s: wait: %w", v.id, err)
	}
	return nil
}

func (v *sdkVM) pause(ctx context.Context) error {
	if err := v.m.PauseVM(ctx); err != nil {
		return fmt.Errorf("sdk %s: pause: %w", v.id, err)
	}
	return nil
}

func (v *sdkVM) resume(ctx context.Context) error {
	if err := v.m.ResumeVM(ctx); err != nil {
		return fmt.Errorf("sdk %s: resume: %w", v.id, err)
	}
	return nil
}

// snapshot pauses, writes the snapshot files into dir and resumes: what
// mvm's Snapshot does before its store commit.
func (v *sdkVM) snapshot(ctx context.Context, dir string) (snapshotRef, error) {
	if err := v.pause(ctx); err != nil {
		return snapshotRef{}, err
	}
	if err := v.m.CreateSnapshot(ctx, filepath.Join(dir, "mem"), filepath.Join(dir, "state")); err != nil {
		return snapshotRef{}, fmt.Errorf("sdk %s: snapshot: %w", v.id, err)
	}
	return snapshotRef{dir: dir}, v.resume(ctx)
}

// destroy is StopVMM (SIGTERM) and Wait, then the socket's removal.
func (v *sdkVM) destroy() error {
	defer v.cancel()
	defer os.Remove(v.sock)
	if _, err := v.m.PID(); err != nil {
		return nil // never started or already gone
	}
	v.m.StopVMM()
	wctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := v.m.Wait(wctx); err != nil && !strings.Contains(err.Error(), "signal: terminated") {
		return fmt.Errorf("sdk %s: wait: %w", v.id, err)
	}
	return nil
}

// pid returns the machine's firecracker pid.
func (v *sdkVM) pid(context.Context) (int, error) { return v.m.PID() }

// newMachineMu serialises sdk.NewMachine (see sdkLauncher).
var newMachineMu sync.Mutex

func (s *sdkLauncher) close() error { return os.RemoveAll(s.dir) }

// noticeExit is Machine.Wait.
func (v *sdkVM) noticeExit(ctx context.Context) error {
	v.m.Wait(ctx) // the error is the exit's (killed)
	return ctx.Err()
}
