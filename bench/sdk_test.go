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

func (s *sdkLauncher) launch(_ context.Context, id string, boot bool) (func() error, error) {
	// The SDK ties the process to this context (exec.CommandContext and a
	// goroutine that SIGTERMs on Done), so it must outlive the call.
	vmctx, cancel := context.WithCancel(context.Background())
	sock := filepath.Join(s.dir, id+".sock")
	cfg := sdk.Config{
		SocketPath:      sock,
		VMID:            id,
		KernelImagePath: s.e.kernel,
		KernelArgs:      bootArgs,
		Drives:          sdk.NewDrivesBuilder(s.e.rootfs).Build(),
		MachineCfg: models.MachineConfiguration{
			VcpuCount:  sdk.Int64(benchVCPUs),
			MemSizeMib: sdk.Int64(benchMemoryMiB),
			Smt:        sdk.Bool(false),
		},
	}
	cmd := sdk.VMCommandBuilder{}.
		WithBin(s.e.bin).
		WithSocketPath(sock).
		AddArgs("--id", id, "--no-seccomp").
		Build(vmctx)
	var m *sdk.Machine
	teardown := func() error {
		defer cancel()
		defer os.Remove(sock)
		if m == nil {
			return nil
		}
		if _, err := m.PID(); err != nil {
			return nil // never started or already gone
		}
		m.StopVMM() // SIGTERM
		wctx, wcancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer wcancel()
		if err := m.Wait(wctx); err != nil && !strings.Contains(err.Error(), "signal: terminated") {
			return fmt.Errorf("sdk %s: wait: %w", id, err)
		}
		return nil
	}
	var err error
	newMachineMu.Lock()
	m, err = sdk.NewMachine(vmctx, cfg, sdk.WithProcessRunner(cmd), sdk.WithLogger(s.log))
	newMachineMu.Unlock()
	if err != nil {
		return teardown, fmt.Errorf("sdk %s: NewMachine: %w", id, err)
	}
	if boot {
		err = m.Start(vmctx) // validation + FcInit handlers + PUT /actions InstanceStart
	} else {
		// Start minus startInstance: exactly the validation and FcInit
		// handler lists (StartVMM, CreateLogFiles, BootstrapLogging,
		// CreateMachine, CreateBootSource, AttachDrives, ...), which is
		// what Machine.Start runs before PUT /actions.
		err = m.Handlers.Run(vmctx, m)
	}
	if err != nil {
		return teardown, fmt.Errorf("sdk %s: start: %w", id, err)
	}
	return teardown, nil
}

// newMachineMu serialises sdk.NewMachine (see sdkLauncher).
var newMachineMu sync.Mutex

func (s *sdkLauncher) close() error { return os.RemoveAll(s.dir) }
