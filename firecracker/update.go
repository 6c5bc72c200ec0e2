package firecracker

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"

	microvm "github.com/mvm-dev/microvm"
	"github.com/mvm-dev/microvm/fcapi"
)

// This file holds the live updates of a VM that are not part of
// microvm.Runtime: its egress policy and its rate limiters.

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
			"the runtime's Network (%T) cannot update policies (no SetPolicy method): %w", r.cfg.Network, microvm.ErrUnsupported)}
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

// RateLimitUpdate lists new rate limiters for some devices of a VM (see
// [Runtime.UpdateRateLimits]). A nil limiter leaves that limiter as it is;
// a non-nil one replaces it whole: its nil buckets mean no limit of that
// kind, so &microvm.RateLimiter{} removes every limit of the device.
type RateLimitUpdate struct {
	// Drives maps drive ids (the root drive's included) to their new
	// limiter.
	Drives map[string]*microvm.RateLimiter
	// Network maps network interface ids to their new limiters.
	Network map[string]NetRateLimits
}

// NetRateLimits are the new limiters of one network interface: Rx limits
// what the guest receives, Tx what it sends. Nil leaves that direction as
// it is.
type NetRateLimits struct {
	Rx *microvm.RateLimiter
	Tx *microvm.RateLimiter
}

// UpdateRateLimits changes the rate limiters of a running or paused VM's
// drives and network interfaces (PATCH /drives/{id}, PATCH
// /network-interfaces/{id}; Firecracker disables a bucket sent with size
// 0) and stores them in its spec, so a restart keeps them.
//
// Unknown drive or interface ids give [microvm.ErrInvalidArgument] naming
// them; limiters are checked with the rules of [microvm.Spec.Validate]
// (a [*microvm.SpecError]); a VM in another status gives an error matching
// [microvm.ErrInvalidTransition]. If a call fails midway, the devices
// already changed are set back (best effort) and the spec is unchanged.
func (r *Runtime) UpdateRateLimits(ctx context.Context, id string, u RateLimitUpdate) (microvm.VM, error) {
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
func planRateLimits(spec microvm.Spec, u RateLimitUpdate) (microvm.Spec, []ratePatch, error) {
	spec = spec.Clone()
	var patches []ratePatch
	var unknown []string
	drives := map[string]*microvm.Drive{spec.RootDrive.ID: &spec.RootDrive}
	driveIDs := []string{spec.RootDrive.ID}
	for i := range spec.Drives {
		drives[spec.Drives[i].ID] = &spec.Drives[i]
		driveIDs = append(driveIDs, spec.Drives[i].ID)
	}
	for _, id := range slices.Sorted(maps.Keys(u.Drives)) {
		rl := u.Drives[id]
		d, ok := drives[id]
		if !ok {
			unknown = append(unknown, fmt.Sprintf("drive %q (its drives: %s)", id, strings.Join(driveIDs, ", ")))
			continue
		}
		if rl == nil {
			continue
		}
		patches = append(patches, ratePatch{drive: true, id: id,
			newRx: patchLimiter(rl), undoRx: patchLimiter(d.RateLimiter)})
		d.RateLimiter = normLimiter(rl)
	}
	nics := map[string]*microvm.NetworkInterface{}
	var nicIDs []string
	for i := range spec.Network {
		nics[spec.Network[i].ID] = &spec.Network[i]
		nicIDs = append(nicIDs, spec.Network[i].ID)
	}
	for _, id := range slices.Sorted(maps.Keys(u.Network)) {
		l := u.Network[id]
		n, ok := nics[id]
		if !ok {
			have := strings.Join(nicIDs, ", ")
			if have == "" {
				have = "none"
			}
			unknown = append(unknown, fmt.Sprintf("network interface %q (its interfaces: %s)", id, have))
			continue
		}
		if l.Rx == nil && l.Tx == nil {
			continue
		}
		p := ratePatch{id: id}
		if l.Rx != nil {
			p.newRx, p.undoRx = patchLimiter(l.Rx), patchLimiter(n.RxRateLimiter)
			n.RxRateLimiter = normLimiter(l.Rx)
		}
		if l.Tx != nil {
			p.newTx, p.undoTx = patchLimiter(l.Tx), patchLimiter(n.TxRateLimiter)
			n.TxRateLimiter = normLimiter(l.Tx)
		}
		patches = append(patches, p)
	}
	if len(unknown) > 0 {
		return spec, nil, fmt.Errorf("the VM has no %s: %w", strings.Join(unknown, ", no "), microvm.ErrInvalidArgument)
	}
	return spec, patches, nil
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

// normLimiter is the limiter to store in a spec: a copy, nil when it has
// no bucket.
func normLimiter(rl *microvm.RateLimiter) *microvm.RateLimiter {
	if rl == nil || (rl.Bandwidth == nil && rl.Ops == nil) {
		return nil
	}
	c := &microvm.RateLimiter{}
	if rl.Bandwidth != nil {
		b := *rl.Bandwidth
		c.Bandwidth = &b
	}
	if rl.Ops != nil {
		o := *rl.Ops
		c.Ops = &o
	}
	return c
}
