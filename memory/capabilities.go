package memory

import (
	"context"
	"fmt"
	"os"

	"github.com/mvm-dev/microvm"
)

// The optional capabilities of the root package, with the firecracker
// runtime's rules, so that tests of programs using them can run on this
// runtime.
var (
	_ microvm.EgressUpdater    = (*Runtime)(nil)
	_ microvm.RateLimitUpdater = (*Runtime)(nil)
)

// SetEgressPolicy replaces the egress policy of the VM's managed network
// interface (the one with an empty HostDevName) with p (nil: the default
// policy) in its spec, in any status. p is checked with the rules of
// [microvm.Spec.Validate]; a VM without a managed interface gives
// [microvm.ErrInvalidArgument].
func (r *Runtime) SetEgressPolicy(ctx context.Context, id string, p *microvm.EgressPolicy) (microvm.VM, error) {
	var out microvm.VM
	err := r.locked(ctx, "set egress policy", id, func(v *vm) error {
		i := -1
		for j, n := range v.spec.Network {
			if n.HostDevName == "" {
				i = j
			}
		}
		if i < 0 {
			return fmt.Errorf("memory: set egress policy of vm %q: it has no managed network interface (one with an empty host_dev_name): %w", id, microvm.ErrInvalidArgument)
		}
		spec := v.spec.Clone()
		spec.Network[i].Egress = p
		spec = spec.Clone() // p is the caller's
		if err := spec.Validate(); err != nil {
			return fmt.Errorf("memory: set egress policy of vm %q: %w", id, err)
		}
		v.spec = spec
		v.updatedAt = r.now()
		r.event(v, v.updatedAt, "egress policy set")
		out = r.view(v)
		return nil
	})
	return out, err
}

// UpdateRateLimits applies u to the limiters of a running or paused VM's
// devices (see [microvm.RateLimitUpdater]) and stores them in its spec.
func (r *Runtime) UpdateRateLimits(ctx context.Context, id string, u microvm.RateLimitUpdate) (microvm.VM, error) {
	var out microvm.VM
	err := r.locked(ctx, "update rate limits", id, func(v *vm) error {
		if v.status != microvm.StatusRunning && v.status != microvm.StatusPaused {
			return fmt.Errorf("memory: vm %q: cannot update rate limits while %s (allowed while running or paused): %w",
				id, v.status, microvm.ErrInvalidTransition)
		}
		spec, err := v.spec.WithRateLimits(u)
		if err == nil {
			err = spec.Validate()
		}
		if err != nil {
			return fmt.Errorf("memory: update rate limits of vm %q: %w", id, err)
		}
		v.spec = spec
		v.updatedAt = r.now()
		r.event(v, v.updatedAt, "rate limits updated")
		out = r.view(v)
		return nil
	})
	return out, err
}

var _ microvm.Renamer = (*Runtime)(nil)

// Rename gives the VM oldID the id newID (see [microvm.Renamer]). The VM
// keeps its status, spec and logs. The snapshots taken from it before are
// artifacts of their own: their VMID stays oldID, and they leave the VM's
// VM.Snapshots (as with the firecracker runtime, which lists a VM's
// snapshots by its id). It records a renamed event (microvm.EventRenamed).
func (r *Runtime) Rename(ctx context.Context, oldID, newID string) (microvm.VM, error) {
	if err := microvm.ValidateID(newID); err != nil {
		return microvm.VM{}, fmt.Errorf("memory: rename vm %q: new id: %w", oldID, err)
	}
	var out microvm.VM
	err := r.locked(ctx, "rename", oldID, func(v *vm) error {
		if oldID == newID {
			return fmt.Errorf("memory: rename vm %q: the new id is the VM's id: %w", oldID, microvm.ErrInvalidArgument)
		}
		if err := microvm.CheckRename(oldID, v.status); err != nil {
			return err
		}
		r.mu.Lock()
		if r.vms[newID] != nil {
			r.mu.Unlock()
			return fmt.Errorf("memory: rename vm %q: vm %q: %w", oldID, newID, microvm.ErrAlreadyExists)
		}
		delete(r.vms, oldID)
		r.vms[newID] = v
		v.id = newID
		for _, s := range r.snaps {
			if s.owner == v {
				s.owner = nil
			}
		}
		r.mu.Unlock()
		v.updatedAt = r.now()
		r.event(v, v.updatedAt, "renamed from "+oldID)
		r.publishEvent(microvm.Event{Time: v.updatedAt.UTC(), VM: newID, Type: microvm.EventRenamed,
			Status: v.status, From: oldID, PID: os.Getpid()})
		out = r.view(v)
		return nil
	})
	return out, err
}
