package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	microvm "github.com/mvm-dev/microvm"
	"github.com/mvm-dev/microvm/firecracker"
	"github.com/mvm-dev/microvm/memory"
)

// globals are the flags every command shares.
type globals struct {
	stateDir       string
	runtime        string
	output         string
	firecrackerBin string
	verbose        bool
	net            netFlags
	jail           jailFlags
	log            logFlags
	stdout, stderr io.Writer
	// unsaved are the host settings this command gave that the state
	// directory has not saved yet (see config.go).
	unsaved map[string]string
}

func newRootCmd(stdout, stderr io.Writer) (*cobra.Command, *globals) {
	g := &globals{stdout: stdout, stderr: stderr}
	root := &cobra.Command{
		Use:           "mvm",
		Short:         "Run Firecracker microVMs",
		Long:          "mvm creates, runs, snapshots and restores Firecracker microVMs on this host.\nVMs outlive mvm: each command adopts them from the state directory.",
		SilenceErrors: true,
		SilenceUsage:  true,
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			switch g.output {
			case "table", "json":
			default:
				return usagef("-o must be table or json (got %q)", g.output)
			}
			switch g.runtime {
			case "firecracker", "memory":
			default:
				return usagef("--runtime must be firecracker or memory (got %q)", g.runtime)
			}
			if g.runtime == "firecracker" && g.stateDir == "" {
				return usagef("--state-dir must name a directory (got an empty value; unset, it is MVM_STATE_DIR or %s)", defaultStateDir())
			}
			if g.runtime == "firecracker" {
				if err := g.resolveSettings(cmd); err != nil {
					return err
				}
			}
			if err := g.log.check(); err != nil {
				return err
			}
			return g.net.check()
		},
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetFlagErrorFunc(flagError)
	pf := root.PersistentFlags()
	pf.StringVar(&g.stateDir, "state-dir", envOr("MVM_STATE_DIR", defaultStateDir()), "state directory (env MVM_STATE_DIR)")
	pf.StringVar(&g.runtime, "runtime", envOr("MVM_RUNTIME", "firecracker"), "runtime: firecracker or memory (memory keeps state for one process only)")
	pf.StringVarP(&g.output, "output", "o", "table", "output format: table or json")
	pf.StringVar(&g.firecrackerBin, "firecracker-bin", os.Getenv("MVM_FIRECRACKER_BIN"), "firecracker binary of new VMs (env MVM_FIRECRACKER_BIN; default: firecracker from PATH); saved in the state directory")
	pf.BoolVarP(&g.verbose, "verbose", "v", false, "after an error, print what firecracker wrote last")
	g.net.flags(root)
	g.jail.flags(root)
	g.log.flags(root)

	root.AddCommand(
		createCmd(g), startCmd(g), stopCmd(g), pauseCmd(g), resumeCmd(g),
		snapshotCmd(g), restoreCmd(g), rmCmd(g), lsCmd(g), inspectCmd(g),
		snapshotsCmd(g), rmSnapshotCmd(g), logsCmd(g), doctorCmd(g), demoCmd(g),
		egressCmd(g), ratelimitCmd(g), configCmd(g), renameCmd(g),
		statsCmd(g), eventsCmd(g),
		execCmd(g), cpCmd(g), envCmd(g), secretCmd(g),
	)
	root.AddCommand(imageCmd(g)) // cmd/mvm/image.go
	return root, g
}

// open opens the runtime the flags select.
func (g *globals) open(ctx context.Context) (microvm.Runtime, error) {
	if g.runtime == "memory" {
		return memory.New(nil), nil
	}
	return openFirecracker(ctx, g)
}

// withRuntime opens the runtime, runs fn and closes the runtime.
func (g *globals) withRuntime(ctx context.Context, fn func(microvm.Runtime) error) error {
	rt, err := g.open(ctx)
	if err != nil {
		return err
	}
	err = fn(rt)
	if cerr := rt.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("close runtime: %w", cerr)
	}
	if errors.Is(err, firecracker.ErrNoNetwork) {
		err = fmt.Errorf("%w (managed networking is off in this state directory: turn it on with mvm config set egress-iface IFACE)", err)
	}
	return err
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

// defaultStateDir is /var/lib/mvm for root, else $XDG_STATE_HOME/mvm
// (~/.local/state/mvm).
func defaultStateDir() string {
	if os.Geteuid() == 0 {
		return "/var/lib/mvm"
	}
	if x := os.Getenv("XDG_STATE_HOME"); x != "" {
		return filepath.Join(x, "mvm")
	}
	if h, err := os.UserHomeDir(); err == nil {
		return filepath.Join(h, ".local", "state", "mvm")
	}
	return filepath.Join(os.TempDir(), "mvm-state")
}
