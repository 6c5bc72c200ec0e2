package microvm

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
)

// Optional capabilities. A runtime offers what is beyond [Runtime] through
// these small interfaces, which callers detect with a type assertion on
// the Runtime they hold:
//
//	if u, ok := rt.(microvm.EgressUpdater); ok { ... }
//
// The firecracker runtime and the in-memory runtime (package memory)
// implement all of them, so a program's tests can use them against the
// in-memory runtime. A runtime that implements one may still refuse a call
// with [ErrUnsupported] (the firecracker runtime without managed
// networking cannot update an egress policy).

// EgressUpdater replaces the egress firewall of a VM's managed network
// interface live.
type EgressUpdater interface {
	// SetEgressPolicy replaces the egress policy of the VM's managed
	// interface with p (nil: the default policy, see
	// [NetworkInterface.Egress]), in any status, and stores it in the
	// VM's spec. p is checked with the rules of [Spec.Validate] (a
	// [*SpecError]); a VM without a managed interface gives
	// [ErrInvalidArgument].
	SetEgressPolicy(ctx context.Context, id string, p *EgressPolicy) (VM, error)
}

// RateLimitUpdater changes the rate limiters of a running or paused VM's
// drives and network interfaces live.
type RateLimitUpdater interface {
	// UpdateRateLimits applies u to the VM's limiters and stores the
	// result in its spec (a restart keeps it), reading and writing them
	// under the VM's lock: concurrent updates of different buckets both
	// take effect. It refuses an update naming no device or an unknown
	// one ([ErrInvalidArgument]), a result that breaks the rules of
	// [Spec.Validate] ([*SpecError]) and a VM that is not running or
	// paused ([ErrInvalidTransition]).
	UpdateRateLimits(ctx context.Context, id string, u RateLimitUpdate) (VM, error)
}

// RateLimitUpdate lists changes to some rate limiters of a VM.
type RateLimitUpdate struct {
	// Drives maps drive ids (the root drive's included) to the change of
	// their limiter.
	Drives map[string]LimiterUpdate
	// Network maps network interface ids to the change of their limiters.
	Network map[string]NetLimiterUpdate
}

// NetLimiterUpdate changes the limiters of one network interface: Rx
// limits what the guest receives, Tx what it sends.
type NetLimiterUpdate struct {
	Rx, Tx LimiterUpdate
}

// LimiterUpdate changes the buckets of one rate limiter: a nil bucket is
// left as it is, a bucket with Size 0 removes that limit, any other
// replaces the bucket. The zero LimiterUpdate changes nothing.
type LimiterUpdate struct {
	Bandwidth, Ops *TokenBucket
}

func (u LimiterUpdate) empty() bool { return u.Bandwidth == nil && u.Ops == nil }

// apply returns cur changed by u (nil when no bucket is left).
func (u LimiterUpdate) apply(cur *RateLimiter) *RateLimiter {
	out := cur.clone()
	if out == nil {
		out = &RateLimiter{}
	}
	set := func(dst **TokenBucket, b *TokenBucket) {
		switch {
		case b == nil:
		case b.Size == 0:
			*dst = nil
		default:
			c := *b
			*dst = &c
		}
	}
	set(&out.Bandwidth, u.Bandwidth)
	set(&out.Ops, u.Ops)
	if out.Bandwidth == nil && out.Ops == nil {
		return nil
	}
	return out
}

// WithRateLimits returns a copy of s with u applied to its devices'
// limiters. An update naming no device, or an id s does not have, gives
// [ErrInvalidArgument] naming every unknown id and the ids s has. It does
// not validate the result ([Spec.Validate] does).
func (s Spec) WithRateLimits(u RateLimitUpdate) (Spec, error) {
	if len(u.Drives) == 0 && len(u.Network) == 0 {
		return s, fmt.Errorf("the rate limit update lists no drive and no network interface: %w", ErrInvalidArgument)
	}
	s = s.Clone()
	var unknown []string
	drives := map[string]*Drive{s.RootDrive.ID: &s.RootDrive}
	driveIDs := []string{s.RootDrive.ID}
	for i := range s.Drives {
		drives[s.Drives[i].ID] = &s.Drives[i]
		driveIDs = append(driveIDs, s.Drives[i].ID)
	}
	for _, id := range slices.Sorted(maps.Keys(u.Drives)) {
		d, ok := drives[id]
		if !ok {
			unknown = append(unknown, fmt.Sprintf("drive %q (its drives: %s)", id, strings.Join(driveIDs, ", ")))
			continue
		}
		if lu := u.Drives[id]; !lu.empty() {
			d.RateLimiter = lu.apply(d.RateLimiter)
		}
	}
	nics := map[string]*NetworkInterface{}
	var nicIDs []string
	for i := range s.Network {
		nics[s.Network[i].ID] = &s.Network[i]
		nicIDs = append(nicIDs, s.Network[i].ID)
	}
	for _, id := range slices.Sorted(maps.Keys(u.Network)) {
		n, ok := nics[id]
		if !ok {
			have := strings.Join(nicIDs, ", ")
			if have == "" {
				have = "none"
			}
			unknown = append(unknown, fmt.Sprintf("network interface %q (its interfaces: %s)", id, have))
			continue
		}
		l := u.Network[id]
		if !l.Rx.empty() {
			n.RxRateLimiter = l.Rx.apply(n.RxRateLimiter)
		}
		if !l.Tx.empty() {
			n.TxRateLimiter = l.Tx.apply(n.TxRateLimiter)
		}
	}
	if len(unknown) > 0 {
		return s, fmt.Errorf("the VM has no %s: %w", strings.Join(unknown, ", no "), ErrInvalidArgument)
	}
	return s, nil
}

// Renamer gives VMs new ids, for instance to hand a VM created or
// restored ahead of time (a warm pool) to its user under the user's name.
type Renamer interface {
	// Rename gives the VM oldID the id newID and returns its view. The VM
	// must be created, stopped or paused ([ErrInvalidTransition]
	// otherwise); newID must be a valid id ([ErrInvalidID]) that no VM
	// has ([ErrAlreadyExists]). The VM keeps its process, status, spec,
	// history and (with the firecracker runtime) its managed network. The
	// snapshots taken from it before are artifacts of their own: they keep
	// oldID as their VMID (Snapshots(ctx, oldID) lists them) and are not
	// in VM.Snapshots any more.
	Rename(ctx context.Context, oldID, newID string) (VM, error)
}

// renameStatuses are the statuses a VM may be renamed in.
var renameStatuses = []Status{StatusCreated, StatusStopped, StatusPaused}

// CheckRename returns the refusal of renaming VM id in status st, an
// error matching [ErrInvalidTransition], or nil when it is allowed.
func CheckRename(id string, st Status) error {
	if slices.Contains(renameStatuses, st) {
		return nil
	}
	return fmt.Errorf("cannot rename vm %q: it is %s, not %s: %w", id, st, orList(renameStatuses), ErrInvalidTransition)
}
