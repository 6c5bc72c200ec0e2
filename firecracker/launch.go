package firecracker

import (
	"context"
	"fmt"
	"os"
)

// launcher is how the runtime starts a VM's firecracker: directly as a
// child of the runtime (directLauncher) or through Firecracker's jailer
// in a chroot, under a uid and cgroups of its own (jailLauncher). Both lay
// the VM's files out through vmPaths (see Runtime.layout), which gives
// every path in the host's view and in firecracker's: the code that
// configures, snapshots and restores a VM never builds one itself.
type launcher interface {
	// prepare describes in rec (rec.Jail) what start will make, before
	// anything is made; the caller writes the record, then calls start.
	prepare(ctx context.Context, rec *vmRecord) error
	// start makes what prepare described and starts firecracker with
	// its API socket at l.apiSock, stdout and stderr on out, inheriting
	// keep. It returns a handle on the firecracker process itself. On
	// error, what it made is left for the caller to release (through
	// the record, see held).
	start(ctx context.Context, rec *vmRecord, l vmPaths, out *os.File, keep []*os.File) (*proc, error)
}

// directLauncher runs firecracker as a child of the runtime, as the
// runtime's user, in the VM directory: the binary the VM was created with
// (Runtime.binOf), in the runtime's configured environment (Config.Env).
type directLauncher struct{ r *Runtime }

// prepare refuses a VM that has run jailed (its record names a jailer):
// started directly it would run outside its sandbox, as the runtime's
// user, with the host's view of the file system.
func (directLauncher) prepare(_ context.Context, rec *vmRecord) error {
	if rec.Jailer != nil {
		return fmt.Errorf("%w: the VM runs jailed (jailer %s) and this runtime has none: open it with a jailer so the VM never runs outside its sandbox", ErrJailer, rec.Jailer.Path)
	}
	return nil
}

func (d directLauncher) start(ctx context.Context, rec *vmRecord, l vmPaths, out *os.File, keep []*os.File) (*proc, error) {
	var p *proc
	bin := d.r.binOf(rec)
	netns := ""
	if rec.Net != nil {
		netns = rec.Net.NetNS
	}
	err := inNetNS(netns, func() (err error) {
		p, err = spawn(spawnSpec{
			bin:  bin,
			args: []string{"--api-sock", l.fcSock(l.apiSock), "--id", rec.ID},
			env:  d.r.cfg.Env,
			dir:  l.dir,
			out:  out,
			keep: keep,
		})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("start firecracker %s: %w", bin, err)
	}
	return p, nil
}

// jailed reports whether the runtime runs its VMs jailed.
func (r *Runtime) jailed() bool {
	_, ok := r.launcher.(*jailLauncher)
	return ok
}
