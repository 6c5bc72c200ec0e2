//go:build linux

package network

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"

	"github.com/vishvananda/netlink"
)

// Cleanup removes leftovers of this Manager's prefix and pool and repairs
// the networks of VMs that are kept. keep reports whether a VM still
// exists; nil keeps none. keep must also return true for VMs whose Setup
// may be running concurrently (call Cleanup at start-up, before Setups, or
// let keep consult the record of VMs being created).
//
//   - A slot given to a VM that keep rejects: torn down, as by Teardown.
//   - A slot given to a VM that keep accepts, whose namespace, devices,
//     addresses, routes or tables are damaged or half-built: rebuilt in
//     place with the same addresses and the VM's stored options. (A VM
//     already running in a namespace that was deleted keeps no network;
//     the rebuilt slot serves its next start.)
//   - A lease no VM holds (half-built, or warm) whose owner (process and
//     Manager) is gone: removed. Those of live Managers, in this process
//     or another, are left alone.
//   - A namespace in RunDir or a link in HostNS named like a slot of this
//     pool but without a lease: removed.
//   - A vm record naming no lease (or an older lease of the address):
//     removed.
//
// It is safe to run while other Managers (here or in other processes) work
// on the same Store. Errors are collected; Cleanup carries on and returns
// them joined, with the report of what it did.
func (m *Manager) Cleanup(ctx context.Context, keep func(vmID string) bool) (Report, error) {
	var rep Report
	if err := m.enter(); err != nil {
		return rep, err
	}
	defer m.leave()
	if keep == nil {
		keep = func(string) bool { return false }
	}
	var errs []error
	if err := m.sweepTemps(ctx); err != nil {
		errs = append(errs, err)
	}
	vms, err := m.cleanupOrphans(ctx, &rep)
	if err != nil {
		errs = append(errs, err)
	}
	for _, vmID := range vms {
		if err := m.cleanupVM(ctx, vmID, keep, &rep); err != nil {
			errs = append(errs, err)
		}
	}
	for _, s := range [][]string{rep.Removed, rep.RemovedVMs, rep.Repaired, rep.StaleRecords} {
		slices.Sort(s)
	}
	if len(rep.Removed)+len(rep.RemovedVMs)+len(rep.Repaired)+len(rep.StaleRecords) > 0 {
		m.log.Info("network: cleanup", "removed", rep.Removed, "removed_vms", rep.RemovedVMs,
			"repaired", rep.Repaired, "stale_records", rep.StaleRecords)
	}
	return rep, errors.Join(errs...)
}

// cleanupOrphans runs under the allocation lock, so no lease appears
// meanwhile. It removes kernel objects without a lease and the leases that
// no vm record holds and whose owner is dead, and returns the VMs whose
// records name one of this pool's slots.
func (m *Manager) cleanupOrphans(ctx context.Context, rep *Report) ([]string, error) {
	unlock, err := m.store.Lock(ctx, m.allocLock())
	if err != nil {
		return nil, fmt.Errorf("network: lock %s: %w", m.allocLock(), err)
	}
	defer unlock()
	var errs []error

	// Kernel objects first: a lease is created before its objects and
	// deleted after them, so an object seen here has a lease listed below
	// unless it is really orphaned.
	objects := map[string]bool{}
	ents, err := os.ReadDir(m.runDir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("network: read %s: %w", m.runDir, err))
	}
	for _, e := range ents {
		if _, ok := m.ours(e.Name()); ok {
			objects[e.Name()] = true
		}
	}
	links, err := m.hostNL.LinkList()
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		errs = append(errs, fmt.Errorf("network: list host links: %w", err))
	}
	for _, l := range links {
		if _, ok := m.ours(l.Attrs().Name); ok {
			objects[l.Attrs().Name] = true
		}
	}

	// Then the records. Claiming a warm slot writes only the vm record, so
	// records are read before leases: a claim racing with this pass is by
	// a live Manager, whose leases are left alone anyway.
	vmIDs, err := m.store.List(kindVM)
	if err != nil {
		return nil, errors.Join(append(errs, fmt.Errorf("network: list vm records: %w", err))...)
	}
	// Slot name -> the tokens vm records name: more than one record may
	// name a slot (a stale one beside the holder's, e.g. left by a
	// crashed Rename), and the lease is held if any of them matches.
	held := map[string][]string{}
	var vms []string
	for _, vmID := range vmIDs {
		var vr vmRecord
		if err := m.store.Get(kindVM, vmID, &vr); err != nil {
			if !isNotFound(err) {
				errs = append(errs, fmt.Errorf("network: vm record %s: %w", vmID, err))
			}
			continue
		}
		if _, ok := m.ours(vr.Slot); ok {
			held[vr.Slot] = append(held[vr.Slot], vr.Token)
			vms = append(vms, vmID)
		}
	}
	ids, err := m.store.List(kindLease)
	if err != nil {
		return nil, errors.Join(append(errs, fmt.Errorf("network: list leases: %w", err))...)
	}
	leased := map[string]bool{}
	for _, id := range ids {
		if _, ok := m.ours(id); !ok {
			continue
		}
		leased[id] = true
		var l leaseRecord
		if err := m.store.Get(kindLease, id, &l); err != nil {
			if !isNotFound(err) {
				errs = append(errs, fmt.Errorf("network: lease %s: %w", id, err))
			}
			continue
		}
		if slices.Contains(held[id], l.Token) || l.Owner.alive() {
			continue // a VM's, or being built or kept warm by a live Manager
		}
		if err := m.destroy(id); err != nil {
			errs = append(errs, err)
			continue
		}
		if err := m.store.Delete(kindLease, id); err != nil {
			errs = append(errs, fmt.Errorf("network: lease %s: %w", id, err))
			continue
		}
		rep.Removed = append(rep.Removed, id)
	}
	for name := range objects {
		if leased[name] {
			continue
		}
		if err := m.destroy(name); err != nil {
			errs = append(errs, err)
			continue
		}
		rep.Removed = append(rep.Removed, name)
	}
	return vms, errors.Join(errs...)
}

// cleanupVM, under the VM's lock, removes its record if stale, and tears
// down or repairs its slot.
func (m *Manager) cleanupVM(ctx context.Context, vmID string, keep func(string) bool, rep *Report) error {
	if validateVMID(vmID) != nil {
		return nil // not written by Setup
	}
	unlock, err := m.lockVM(ctx, vmID)
	if err != nil {
		return err
	}
	defer unlock()
	vr, l, status, err := m.lookup(vmID)
	switch {
	case err != nil:
		return err
	case status == noRecord:
		return nil
	case status == staleRecord:
		if err := m.dropStale(vmID); err != nil {
			return err
		}
		rep.StaleRecords = append(rep.StaleRecords, vmID)
		return nil
	}
	if !keep(vmID) {
		if err := m.teardownLocked(ctx, vmID); err != nil {
			return err
		}
		rep.RemovedVMs = append(rep.RemovedVMs, vmID)
		rep.Removed = append(rep.Removed, l.Name)
		return nil
	}
	if l.State == stateBuilt {
		if ok, err := m.intact(&l); err != nil || ok {
			return err
		}
	}
	if err := m.build(ctx, &l, vr.options()); err != nil {
		return fmt.Errorf("network: repair %q: %w", vmID, err)
	}
	if l.State != stateBuilt {
		l.State = stateBuilt
		if err := m.putLease(ctx, &l); err != nil {
			return fmt.Errorf("network: repair %q: %w", vmID, err)
		}
	}
	rep.Repaired = append(rep.Repaired, vmID)
	return nil
}
