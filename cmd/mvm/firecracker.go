package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	microvm "github.com/mvm-dev/microvm"
	"github.com/mvm-dev/microvm/firecracker"
	"github.com/mvm-dev/microvm/network"
	"github.com/mvm-dev/microvm/network/fcnet"
)

// netStateDir is where, under the state directory, the network keeps its
// leases (a network.FileStore of its own).
const netStateDir = "network"

// openFirecracker opens the Firecracker runtime over the state directory;
// the VMs earlier mvm commands left running are adopted as the command
// touches them (one VM for most commands, all for ls). With --egress-iface
// it has managed networking: a network.Manager over <state-dir>/network,
// closed with the runtime (VM networks stay with their VMs).
func openFirecracker(ctx context.Context, g *globals) (microvm.Runtime, error) {
	rt, err := openFirecrackerRuntime(ctx, g)
	if err != nil {
		if errors.Is(err, microvm.ErrInvalidArgument) && strings.Contains(err.Error(), "firecracker binary") {
			err = fmt.Errorf("%w (name it once with --firecracker-bin PATH, or: mvm config set firecracker-bin PATH)", err)
		}
		return nil, err
	}
	if err := g.saveGiven(); err != nil {
		rt.Close()
		return nil, err
	}
	return rt, nil
}

func openFirecrackerRuntime(ctx context.Context, g *globals) (microvm.Runtime, error) {
	// Metrics on: `mvm stats` shows disk and network figures from them.
	cfg := firecracker.Config{StateDir: g.stateDir, FirecrackerBin: g.firecrackerBin, Metrics: true}
	jc, err := g.jail.config()
	if err != nil {
		return nil, err
	}
	cfg.Jailer = jc
	cfg.Logger = g.log.logger(g.stderr)
	if g.net.egressIface == "" {
		return firecracker.Open(ctx, cfg)
	}
	ncfg, err := g.net.config()
	if err != nil {
		return nil, err
	}
	// The state directory is private (firecracker.Open makes it so when it
	// creates it); create it first so the network store below does not.
	if err := os.MkdirAll(g.stateDir, 0o700); err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	}
	reg, err := network.OpenStore(filepath.Join(g.stateDir, netStateDir))
	if err != nil {
		return nil, err
	}
	ncfg.Store = reg
	if l := g.log.logger(g.stderr); l != nil {
		ncfg.Logger = l
	}
	m, err := network.New(ctx, ncfg)
	if err != nil {
		reg.Close()
		return nil, netConfigErr(g, err)
	}
	if m.EgressMissing() && ncfg.Logger == nil { // with a logger, the manager has said it
		fmt.Fprintf(g.stderr, "mvm: warning: egress interface %s is missing: VMs can be listed, stopped and removed, but new VM networks fail until it is back\n", shellArg(m.EgressInterface()))
	}
	cfg.Network = fcnet.New(m)
	rt, err := firecracker.Open(ctx, cfg)
	if err != nil {
		m.Close()
		reg.Close()
		return nil, err
	}
	return &netRuntime{Runtime: rt, m: m, reg: reg}, nil
}

// netConfigErr says why managed networking did not start, naming the
// setting at fault as the command line does (not the library's field).
func netConfigErr(g *globals, err error) error {
	var fe *network.FieldError
	if errors.As(err, &fe) {
		for _, f := range []struct{ field, flag, value string }{
			{"Config.EgressInterface", "egress-iface", g.net.egressIface},
			{"Config.Pool", "net-pool", g.net.pool},
			{"Config.RunDir", "net-run-dir", g.net.runDir},
		} {
			if fe.Field != f.field {
				continue
			}
			hint := ""
			if _, given := g.unsaved[f.flag]; !given {
				hint = fmt.Sprintf(" (saved in this state directory: change it with mvm config set %s VALUE)", f.flag)
				if f.flag == "egress-iface" {
					// VMs with networks hold the setting: the way out is the interface.
					hint = " (saved in this state directory: bring the interface back, or, while no VM has a managed network, mvm config set egress-iface IFACE)"
				}
			}
			return fmt.Errorf("managed networking: --%s %s: %s%s: %w", f.flag, shellArg(f.value), fe.Rule, hint, fe.Err)
		}
	}
	return fmt.Errorf("managed networking (--egress-iface %s): %w", g.net.egressIface, err)
}

// egressMissingErr says an operation failed for want of the egress
// interface in the command line's terms (--egress-iface, not the
// library's Config.EgressInterface); other errors are returned as they are.
func egressMissingErr(g *globals, err error) error {
	var fe *network.FieldError
	if !errors.Is(err, network.ErrEgressMissing) || !errors.As(err, &fe) {
		return err
	}
	msg := strings.Replace(err.Error(), fe.Error(), fmt.Sprintf("--egress-iface %s: %s", shellArg(g.net.egressIface), fe.Rule), 1)
	return &rewordedError{msg: msg + ": " + network.ErrEgressMissing.Error(), err: err}
}

// netRuntime is the Firecracker runtime with the network it owns.
type netRuntime struct {
	*firecracker.Runtime
	m   *network.Manager
	reg *network.FileStore
}

// Close closes the runtime, then the network manager and its store.
func (r *netRuntime) Close() error {
	return errors.Join(r.Runtime.Close(), r.m.Close(), r.reg.Close())
}
