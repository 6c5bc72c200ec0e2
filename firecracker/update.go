package firecracker

import (
	"context"
	"fmt"
	"maps"
	"slices"

	microvm "github.com/mvm-dev/microvm"
	"github.com/mvm-dev/microvm/fcapi"
)

// This file holds the live updates of a VM that are not part of
// microvm.Runtime: its egress policy and its rate limiters, the optional
// capabilities microvm.EgressUpdater and microvm.RateLimitUpdater.

var (
	_ microvm.EgressUpdater    = (*Runtime)(nil)
	_ microvm.RateLimitUpdater = (*Runtime)(nil)
)

// SetEgressPolicy replaces the egress firewall of the VM's managed network
// interface with p (nil: the default policy, see
// microvm.NetworkInterface.Egress). It applies at once, to flows already
// open too, whatever the VM's status (the network lives from Create to
// Destroy), and is stored in the VM's spec, so a restart, a snapshot and
// its clones keep it.
//
// p is checked with the rules of [microvm.Spec.Validate] (a
// [*microvm.SpecError] naming network[i].egress...). A VM without a managed
// interface gives [microvm.ErrInvalidArgument]; a runtime whose Network is
// nil or cannot update policies ([PolicyUpdater]) gives
// [microvm.ErrUnsupported].
func (r *Runtime) SetEgressPolicy(ctx context.Context, id string, p *microvm.EgressPolicy) (microvm.VM, error) {
	rec, done, err := r.enterVM(ctx, id)
	if err != nil {
		return microvm.VM{}, err
	}
	defer done()
	i := managedIndex(rec.Spec)
	if i < 0 {
		return microvm.VM{}, invalidArg("set egress policy of vm %q: it has no managed network interface (one with an empty host_dev_name)", id)
	}
	spec := rec.Spec.Clone()
	spec.Network[i].Egress = p
	spec = spec.Clone() // p is the caller's
	if err := spec.Validate(); err != nil {
		return microvm.VM{}, err
	}
	if r.cfg.Network == nil {
		return microvm.VM{}, &microvm.OpError{Op: "set egress policy", ID: id, Err: errNoNetwork}
	}
	pu, ok := r.cfg.Network.(PolicyUpdater)
	if !ok {
		return microvm.VM{}, &microvm.OpError{Op: "set egress policy", ID: id, Err: fmt.Errorf(
			"the runtime's managed networking cannot update egress policies live: %w", microvm.ErrUnsupported)}
	}
	if err := pu.SetPolicy(ctx, id, spec.Network[i].Egress); err != nil {
		return microvm.VM{}, &microvm.OpError{Op: "set egress policy", ID: id, Err: err}
	}
	old := rec.Spec
	rec.Spec = spec
	if err := r.save(rec); err != nil {
		// Put the firewall back in line with the record.
		if rerr := pu.SetPolicy(context.WithoutCancel(ctx), id, old.Network[i].Egress); rerr != nil {
			r.log.Error("restore egress policy after a failed record write", "vm", id, "err", rerr)
		}
		return microvm.VM{}, &microvm.OpError{Op: "set egress policy", ID: id, Err: err}
	}
	return r.viewOf(rec), nil
}

// UpdateRateLimits changes the rate limiters of a running or paused VM's
// drives and network interfaces (PATCH /drives/{id}, PATCH
// /network-interfaces/{id}; Firecracker disables a bucket sent with size
// 0) and stores them in its spec, so a restart keeps them. The current
// limiters are read and the new ones written under the VM's lock, so a
// bucket the update leaves alone keeps its value even when another update
// runs at the same time.
//
// Unknown drive or interface ids give [microvm.ErrInvalidArgument] naming
// them; limiters are checked with the rules of [microvm.Spec.Validate]
// (a [*microvm.SpecError]); a VM in another status gives an error matching
// [microvm.ErrInvalidTransition]. If a call fails midway, the devices
// already changed are set back (best effort) and the spec is unchanged.
func (r *Runtime) UpdateRateLimits(ctx context.Context, id string, u microvm.RateLimitUpdate) (microvm.VM, error) {
	if err := microvm.ValidateID(id); err != nil {
		return microvm.VM{}, err
	}
	if len(u.Drives) == 0 && len(u.Network) == 0 {
		return microvm.VM{}, invalidArg("update rate limits of vm %q: the update lists no drive and no network interface", id)
	}
	if err := r.begin(); err != nil {
		return microvm.VM{}, err
	}
	defer r.end()
	if err := ctx.Err(); err != nil {
		return microvm.VM{}, err
	}
	unlock, rec, err := r.lockLoad(ctx, id)
	if err != nil {
		return microvm.VM{}, err
	}
	defer unlock()
	if rec.Status != microvm.StatusRunning && rec.Status != microvm.StatusPaused {
		return microvm.VM{}, fmt.Errorf("vm %q: cannot update rate limits while %s (allowed while running or paused): %w",
			id, rec.Status, microvm.ErrInvalidTransition)
	}
	spec, patches, err := planRateLimits(rec.Spec, u)
	if err != nil {
		return microvm.VM{}, fmt.Errorf("update rate limits of vm %q: %w", id, err)
	}
	if err := spec.Validate(); err != nil {
		return microvm.VM{}, err
	}
	for n, pt := range patches {
		if err := r.call(ctx, rec, "update rate limits", func(c *vmClient) error { return pt.apply(ctx, c, false) }); err != nil {
			r.undoRateLimits(ctx, rec, patches[:n])
			return microvm.VM{}, r.failOp("update rate limits", rec, err)
		}
	}
	old := rec.Spec
	rec.Spec = spec
	if err := r.save(rec); err != nil {
		rec.Spec = old
		r.undoRateLimits(ctx, rec, patches)
		return microvm.VM{}, &microvm.OpError{Op: "update rate limits", ID: id, Err: err}
	}
	return r.viewOf(rec), nil
}

// undoRateLimits sends back, newest first, the limiters that done
// replaced (best effort: failures are logged), unless the VM failed.
func (r *Runtime) undoRateLimits(ctx context.Context, rec *vmRecord, done []ratePatch) {
	if rec.Status == microvm.StatusFailed {
		return
	}
	ctx = context.WithoutCancel(ctx)
	for _, p := range slices.Backward(done) {
		if err := r.call(ctx, rec, "restore rate limits", func(c *vmClient) error { return p.apply(ctx, c, true) }); err != nil {
			r.log.Error("restore rate limits after a failed update", "vm", rec.ID, "device", p.id, "err", err)
		}
	}
}

// ratePatch is one PATCH of a rate limit update, with the limiters that
// undo it. For a drive, rx is its limiter; a nil limiter is not sent.
type ratePatch struct {
	drive          bool
	id             string
	newRx, newTx   *fcapi.RateLimiter
	undoRx, undoTx *fcapi.RateLimiter
}

// apply sends the patch, or with undo the limiters it replaced.
func (p ratePatch) apply(ctx context.Context, c *vmClient, undo bool) error {
	rx, tx := p.newRx, p.newTx
	if undo {
		rx, tx = p.undoRx, p.undoTx
	}
	if p.drive {
		return c.PatchDrive(ctx, fcapi.PartialDrive{DriveID: p.id, RateLimiter: rx})
	}
	return c.PatchNetworkInterface(ctx, fcapi.PartialNetworkInterface{IfaceID: p.id, RxRateLimiter: rx, TxRateLimiter: tx})
}

// planRateLimits applies u to a copy of spec and returns it with the
// PATCH calls to make (drives, then interfaces, each sorted by id). It
// names every unknown id.
func planRateLimits(spec microvm.Spec, u microvm.RateLimitUpdate) (microvm.Spec, []ratePatch, error) {
	next, err := spec.WithRateLimits(u)
	if err != nil {
		return spec, nil, err
	}
	drives := map[string][2]*microvm.RateLimiter{spec.RootDrive.ID: {spec.RootDrive.RateLimiter, next.RootDrive.RateLimiter}}
	for i := range spec.Drives {
		drives[spec.Drives[i].ID] = [2]*microvm.RateLimiter{spec.Drives[i].RateLimiter, next.Drives[i].RateLimiter}
	}
	var patches []ratePatch
	for _, id := range slices.Sorted(maps.Keys(u.Drives)) {
		if lu := u.Drives[id]; lu.Bandwidth == nil && lu.Ops == nil {
			continue
		}
		d := drives[id]
		patches = append(patches, ratePatch{drive: true, id: id, newRx: patchLimiter(d[1]), undoRx: patchLimiter(d[0])})
	}
	for _, id := range slices.Sorted(maps.Keys(u.Network)) {
		l := u.Network[id]
		i := slices.IndexFunc(spec.Network, func(n microvm.NetworkInterface) bool { return n.ID == id })
		p := ratePatch{id: id}
		if l.Rx.Bandwidth != nil || l.Rx.Ops != nil {
			p.newRx, p.undoRx = patchLimiter(next.Network[i].RxRateLimiter), patchLimiter(spec.Network[i].RxRateLimiter)
		}
		if l.Tx.Bandwidth != nil || l.Tx.Ops != nil {
			p.newTx, p.undoTx = patchLimiter(next.Network[i].TxRateLimiter), patchLimiter(spec.Network[i].TxRateLimiter)
		}
		if p.newRx != nil || p.newTx != nil {
			patches = append(patches, p)
		}
	}
	return next, patches, nil
}

// patchLimiter is the PATCH body of a limiter that replaces the device's
// whole: a missing bucket is sent with size 0, which disables it (nil: no
// limits at all).
func patchLimiter(rl *microvm.RateLimiter) *fcapi.RateLimiter {
	off := func() *fcapi.TokenBucket { return &fcapi.TokenBucket{Size: 0, RefillTime: 0} }
	out := &fcapi.RateLimiter{Bandwidth: off(), Ops: off()}
	if rl == nil {
		return out
	}
	if b := tokenBucket(rl.Bandwidth); b != nil {
		out.Bandwidth = b
	}
	if o := tokenBucket(rl.Ops); o != nil {
		out.Ops = o
	}
	return out
}
